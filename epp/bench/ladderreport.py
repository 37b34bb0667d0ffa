"""bench/results/ladder.md and its plots from ladder*.json: every router's TTFT p90 beside its
excess over the floor, seeds side by side, and issue 17's targets checked stage by stage.

A pure function of the JSON (same input, same bytes), like report.md.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Any

PEER_KINDS = ("smg-", "sglang-router-", "vllm-router-")
RR, LR, SUBJECT = "envoy-rr", "envoy-lr", "epp"


def _f(x: Any, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def is_peer(router: str) -> bool:
    return router.startswith(PEER_KINDS)


def merge(datas: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows of several result files (a later file's row replaces an earlier one for the same
    shape, seed, router and stage) and their metas."""
    by: dict[tuple, dict] = {}
    for d in datas:
        for r in d["rows"]:
            by[(r["shape"], r["seed"], r["router"], r["stage"])] = r
    return list(by.values()), [d["meta"] for d in datas]


def _cell(rows: list[dict], key: str) -> tuple[float | None, str]:
    """Mean over seeds and the range as text ("0.41 (0.39-0.44)")."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return None, "–"
    m = mean(vals)
    if len(vals) == 1:
        return m, _f(m)
    return m, f"{_f(m)} ({_f(min(vals))}–{_f(max(vals))})"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b <= 0:
        return 0.0 if a <= 0 else float("inf")
    return max(a, 0.0) / b


def stage_summary(rows: list[dict], shape: str) -> list[dict]:
    """Per stage: per router the seed-mean p90, excess and throughput; the best peer; the ratios."""
    rs = [r for r in rows if r["shape"] == shape]
    out = []
    for stage in sorted({r["stage"] for r in rs}, key=lambda s: int(s[1:])):
        at = [r for r in rs if r["stage"] == stage]
        load = at[0]["load"]
        per: dict[str, dict] = {}
        for router in dict.fromkeys(r["router"] for r in at):
            mine = [r for r in at if r["router"] == router]
            per[router] = {
                k: _cell(mine, k)
                for k in (
                    "ttft_p90",
                    "excess_p90",
                    "output_tokens_per_s",
                    "success_rate",
                    "prefix_cache_hit_rate",
                    "floor_p90",
                    "tput_ceiling",
                )
            }
            # Per seed, so a ratio's spread is visible.
            per[router]["by_seed"] = {r["seed"]: r for r in mine}
        peers = [n for n in per if is_peer(n) and per[n]["excess_p90"][0] is not None]
        best = min(peers, key=lambda n: per[n]["excess_p90"][0]) if peers else None
        best_tput = max(peers, key=lambda n: per[n]["output_tokens_per_s"][0] or 0) if peers else None
        s = {"stage": stage, "load": load, "per": per, "best_peer": best, "best_tput_peer": best_tput}
        e = per.get(SUBJECT, {}).get("excess_p90", (None, ""))[0]
        s["vs_best_peer"] = _ratio(e, per[best]["excess_p90"][0]) if best else None
        s["vs_rr"] = _ratio(e, per[RR]["excess_p90"][0]) if RR in per else None
        s["vs_lr_p90"] = (
            _ratio(per.get(SUBJECT, {}).get("ttft_p90", (None, ""))[0], per[LR]["ttft_p90"][0]) if LR in per else None
        )
        t = per.get(SUBJECT, {}).get("output_tokens_per_s", (None, ""))[0]
        s["tput_vs_best_peer"] = (
            t / per[best_tput]["output_tokens_per_s"][0]
            if best_tput and t and per[best_tput]["output_tokens_per_s"][0]
            else None
        )
        s["tput_vs_rr"] = (
            t / per[RR]["output_tokens_per_s"][0] if RR in per and t and per[RR]["output_tokens_per_s"][0] else None
        )
        out.append(s)
    return out


def _seed_ratios(s: dict, other: str, key: str = "excess_p90") -> str:
    """The ratio per seed (epp's value over `other`'s on the same seed), for the spread."""
    mine, theirs = s["per"].get(SUBJECT, {}).get("by_seed", {}), s["per"].get(other, {}).get("by_seed", {})
    vals = [_ratio(mine[k][key], theirs[k][key]) for k in sorted(mine) if k in theirs]
    vals = [v for v in vals if v is not None]
    return ", ".join(_f(v, 2) for v in vals) if vals else "–"


def shape_table(rows: list[dict], shape: str) -> list[str]:
    summary = stage_summary(rows, shape)
    routers = list(dict.fromkeys(r["router"] for r in rows if r["shape"] == shape))
    head = [
        "| stage | load | floor p90 s | ceiling tok/s | "
        + " | ".join(f"{n} p90 / excess / tok/s" for n in routers)
        + " | epp excess ÷ best peer (per seed) | epp excess ÷ round-robin (per seed) |",
        "|" + "---|" * (4 + len(routers) + 2),
    ]
    for s in summary:
        floor = s["per"][routers[0]]["floor_p90"][1] if routers[0] in s["per"] else "–"
        ceiling = s["per"][routers[0]]["tput_ceiling"][0] if routers[0] in s["per"] else None
        ceiling_cell = "–" if ceiling is None else f"{ceiling:,.0f}"
        cells = []
        for n in routers:
            c = s["per"].get(n)
            if not c:
                cells.append("–")
                continue
            ok = c["success_rate"][0]
            cells.append(
                f"{c['ttft_p90'][1]} / {c['excess_p90'][1]} / {c['output_tokens_per_s'][1].split(' ')[0]}"
                + ("" if ok is None or ok >= 1 else f" (ok {ok:.3f})")
            )
        best = s["best_peer"]
        vb = f"{_f(s['vs_best_peer'], 2)} vs {best} ({_seed_ratios(s, best)})" if best else "–"
        vr = f"{_f(s['vs_rr'], 2)} ({_seed_ratios(s, RR)})" if s["vs_rr"] is not None else "–"
        head.append(
            f"| {s['stage']} | {s['load']:.2f} | {floor} | {ceiling_cell} | " + " | ".join(cells) + f" | {vb} | {vr} |"
        )
    return head


def _tput_reach(s: dict, other: str, factor: float) -> tuple[bool, str]:
    """Per seed, the throughput epp would need (`factor` x `other`'s on that seed) against the
    stage's ceiling (epp/bench/floor.py): (whether every seed needs more than the ceiling, text)."""
    mine, theirs = s["per"][SUBJECT]["by_seed"], s["per"][other]["by_seed"]
    parts, beyond = [], []
    for seed in sorted(mine):
        ceiling = mine[seed].get("tput_ceiling")
        if seed not in theirs or not ceiling:
            continue
        need = factor * theirs[seed]["output_tokens_per_s"]
        beyond.append(need > ceiling)
        parts.append(
            f"seed {seed} needs {need:,.0f} of at most {ceiling:,.0f} tok/s (epp "
            f"{mine[seed]['output_tokens_per_s'] / ceiling:.0%} of it)"
        )
    return bool(beyond) and all(beyond), "; ".join(parts)


def targets(rows: list[dict]) -> list[str]:
    """Issue 17's Done-means, each with its verdict and the numbers behind it."""
    out = ["| target | verdict | numbers |", "|---|---|---|"]

    def add(name: str, ok: bool | None, detail: str, impossible: bool = False) -> None:
        verdict = "–" if ok is None else ("met" if ok else "**missed**")
        if impossible and ok is False:
            verdict = "**missed: no router can here**"
        out.append(f"| {name} | {verdict} | {detail} |")

    shapes = {r["shape"] for r in rows}
    for shape in ("shared-prefix", "cache-pressure"):
        if shape not in shapes:
            continue
        summ = stage_summary(rows, shape)
        pts = [s for s in summ if s["load"] >= 0.5 and s["vs_best_peer"] is not None]
        if pts:
            worst = max(pts, key=lambda s: s["vs_best_peer"])
            add(
                f"{shape}: epp excess ≤ 0.5x best peer at every stage ≥ 0.5",
                all(s["vs_best_peer"] <= 0.5 for s in pts),
                "; ".join(f"{s['load']:.2f}: {_f(s['vs_best_peer'], 2)} vs {s['best_peer']}" for s in pts)
                + f" (worst {_f(worst['vs_best_peer'], 2)})",
            )
        if shape == "shared-prefix":
            pts = [s for s in summ if s["load"] >= 0.8 and s["vs_rr"] is not None]
            if pts:
                add(
                    "shared-prefix: epp excess ≤ 0.1x round-robin at every stage ≥ 0.8",
                    all(s["vs_rr"] <= 0.1 for s in pts),
                    "; ".join(f"{s['load']:.2f}: {_f(s['vs_rr'], 3)}" for s in pts),
                )
            top = summ[-1] if summ else None
            if top and top["tput_vs_best_peer"] is not None:
                beyond, reach = _tput_reach(top, top["best_tput_peer"], 1.1)
                add(
                    "shared-prefix: throughput at saturation ≥ 1.1x best peer",
                    top["tput_vs_best_peer"] >= 1.1,
                    f"load {top['load']:.2f}: {_f(top['tput_vs_best_peer'], 2)}x {top['best_tput_peer']}"
                    + (f"; {reach}" if reach else ""),
                    beyond,
                )
            if top and top["tput_vs_rr"] is not None:
                beyond, reach = _tput_reach(top, RR, 2.0)
                add(
                    "shared-prefix: throughput at saturation ≥ 2x round-robin",
                    top["tput_vs_rr"] >= 2.0,
                    f"load {top['load']:.2f}: {_f(top['tput_vs_rr'], 2)}x" + (f"; {reach}" if reach else ""),
                    beyond,
                )
        ep = [r for r in rows if r["shape"] == shape and r["router"] == SUBJECT]
        if ep:
            add(
                f"{shape}: 100 % success",
                all(r["success_rate"] >= 1 for r in ep),
                f"min {min(r['success_rate'] for r in ep):.4f} over {len(ep)} stages",
            )
    for shape in ("sharegpt-like", "hot-prefix"):
        if shape not in shapes:
            continue
        summ = stage_summary(rows, shape)
        parts, ok = [], True
        for s in summ:
            e, lr = s["per"].get(SUBJECT), s["per"].get(LR)
            if not e or not lr:
                continue
            # "beyond run-to-run spread": epp's best seed above envoy-lr's worst seed.
            e_vals = [r["ttft_p90"] for r in e["by_seed"].values() if r["ttft_p90"] is not None]
            l_vals = [r["ttft_p90"] for r in lr["by_seed"].values() if r["ttft_p90"] is not None]
            if not e_vals or not l_vals:
                continue
            worse = min(e_vals) > max(l_vals)
            ok &= not worse
            parts.append(f"{s['load']:.2f}: {_f(mean(e_vals))} vs {_f(mean(l_vals))}" + (" (worse)" if worse else ""))
        if parts:
            add(f"{shape}: TTFT p90 never worse than envoy-lr beyond spread", ok, "; ".join(parts))
    return out


def render(datas: list[dict], out_dir: Path, stem: str = "ladder") -> Path:
    from epp.bench.plots import plot_ladder

    rows, metas = merge(datas)
    lines = ["# The canonical warm ladder (`epp-bench ladder`)", ""]
    for m in metas:
        lines.append(
            f"- {m.get('date', '')}, {m.get('machine', {}).get('cpu', '?')} "
            f"({m.get('machine', {}).get('cores', '?')} cores), commit {m.get('commit', '?')}, "
            f"{m.get('wall_s', '?')} s wall: `{m.get('command', '')}`; peers: "
            + (", ".join(f"{k}: {v}" for k, v in sorted(m.get("peer_versions", {}).items())) or "none")
            + (f"; skipped: {m['skipped']}" if m.get("skipped") else "")
        )
    lines += [
        "",
        "Per shape, seed and router: a fresh 8-replica epp-sim fleet and router, an unrecorded warm-up "
        "stage, then Poisson stages on one prompt set (system prompts stay, questions are new), "
        "300 requests each, output 64–256 tokens. Latencies are simulated seconds. **floor p90** is the "
        "p90 of each request's lowest possible TTFT (epp/bench/floor.py, over the whole sequence: a prefix "
        "sent earlier may be cached), the same for every router; **excess** = TTFT p90 − floor p90. "
        "**ceiling** is the output tokens/s no router can exceed on the stage as it is measured (all "
        "tokens over first arrival to last completion; each request no earlier than its arrival, its "
        "floor and one decode step per further token): where a router is near it, the stage measures "
        "the offered load, not the router. "
        "Cells show the mean over seeds and the range. Ratios are epp's excess over the other router's; "
        "per-seed ratios in brackets.",
        "",
        "## Targets (issue 17)",
        "",
    ]
    lines += targets(rows)
    for shape in dict.fromkeys(r["shape"] for r in rows):
        share = next(r["resident_share"] for r in rows if r["shape"] == shape)
        cap = next(r["capacity"] for r in rows if r["shape"] == shape)
        lines += ["", f"## {shape}: resident prefix set {share:.0%} of fleet KV, capacity {cap:.2f} req/s", ""]
        lines += shape_table(rows, shape)
        png = out_dir / f"{stem}-{shape}.png"
        plot_ladder([r for r in rows if r["shape"] == shape], shape, png)
        lines += ["", f"![{shape}]({png.name})"]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""bench/results/kvcache.md and its plots from kvcache.json: precise vs approximate, per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epp.bench.plots import plot_workload


def _f(x: Any, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _table(rows: list[dict], shape: str, pairs: list[tuple[str, str]]) -> list[str]:
    rs = [r for r in rows if r.get("shape") == shape]
    routers = list(dict.fromkeys(r["router"] for r in rs))
    loads = sorted({r["load"] for r in rs})
    seeds = sorted({r["seed"] for r in rs})
    out = [
        "| load | seed | "
        + " | ".join(f"{r} TTFT p90 s / tok/s / hit" for r in routers)
        + " | "
        + " | ".join(f"{a}/{b} p90 / tok/s" for a, b in pairs)
        + " |",
        "|" + "---|" * (2 + len(routers) + len(pairs)),
    ]
    for load in loads:
        for seed in seeds:
            by = {r["router"]: r for r in rs if r["load"] == load and r["seed"] == seed}
            if not by:
                continue
            cells = [
                f"{_f(by[r]['ttft_p90'])} / {_f(by[r]['output_tokens_per_s'], 0)} / "
                f"{_f(by[r]['prefix_cache_hit_rate'], 2)}"
                + ("" if by[r]["success_rate"] == 1 else f" (ok {by[r]['success_rate']:.3f})")
                if r in by
                else "–"
                for r in routers
            ]
            ratios = []
            for a, b in pairs:
                if a in by and b in by:
                    ratios.append(
                        f"{_f(_ratio(by[a]['ttft_p90'], by[b]['ttft_p90']), 2)}x / "
                        f"{_f(_ratio(by[a]['output_tokens_per_s'], by[b]['output_tokens_per_s']), 2)}x"
                    )
                else:
                    ratios.append("–")
            out.append(f"| {load:.2f} | {seed} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return out


def render(data: dict, out_dir: Path, stem: str = "kvcache") -> Path:
    rows, meta = data["rows"], data["meta"]
    routers = list(dict.fromkeys(r["router"] for r in rows))
    pairs = [
        (a, b)
        for a, b in (
            ("precise", "approx"),
            ("precise-x2", "approx-x2"),
            ("precise-x2", "precise"),
            ("approx-x2", "approx"),
        )
        if a in routers and b in routers
    ]
    lines = [
        "# Precise vs approximate prefix index under cache pressure (`epp-bench kvcache`)",
        "",
        f"Measured {meta.get('date', '')} on {meta.get('machine', {}).get('cpu', '?')} "
        f"({meta.get('machine', {}).get('cores', '?')} cores), commit {meta.get('commit', '?')}; "
        f"{meta.get('wall_s', '?')} s wall. Command: `{meta.get('command', '')}`.",
        "",
        "Each router gets a fresh 8-replica epp-sim fleet publishing vLLM KV events, an unrecorded "
        "warm-up stage, then Poisson stages from light load past saturation on one prompt set "
        "(system prompts stay, questions are new each stage). Latencies in simulated seconds. "
        "`approx` = epp-default.yaml, `precise` = epp-precise.yaml (KV events + the servers' /tokenize), "
        "`-x2` = two active-active EPP replicas behind one Envoy ext_proc cluster. Ratios: first router's "
        "TTFT p90 / second's (lower is better for the first) and output tok/s (higher is better).",
        "",
    ]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        share = next(r["resident_share"] for r in rows if r["shape"] == shape)
        lines += [f"## {shape}: resident prefix set {share:.0%} of fleet KV", ""]
        lines += _table(rows, shape, pairs)
        png = out_dir / f"{stem}-{shape}.png"
        plot_workload([r for r in rows if r["shape"] == shape], f"cache {shape}", png)
        lines += ["", f"![{shape}]({png.name})", ""]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    return path

"""Render bench/results/report.md (and the PNG plots) from the JSON result files alone.

The Markdown is a pure function of the JSON: regenerating it from committed results gives the
same bytes (tested), so the report can never drift from the numbers it shows.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from epp.bench.des import token_ids
from epp.bench.floor import ttft_p90_floor
from epp.bench.plots import plot_workload
from epp.bench.results import load
from epp.bench.workloads import make

LIVE, DES, REPEAT = "live.json", "des.json", "live-repeat.json"
REPORT = "report.md"


def _f(x: Any, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _share(row: dict[str, Any]) -> str:
    share = row.get("per_server_share") or {}
    if not share or not any(share.values()):
        return "—"
    vals = sorted(share.values(), reverse=True)
    return f"{vals[0]:.2f} / {sum(1 for v in vals if v > 0)}"


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| router | load | req/s | requests | success | TTFT p50 s | TTFT p90 s | TTFT p99 s | ITL p50 ms "
        "| e2e p90 s | output tok/s | prefix hit | max share / servers used |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (_router_order(r["router"]), r["qps"])):
        itl = None if r["itl_p50"] is None else r["itl_p50"] * 1000
        out.append(
            f"| {r['router']} | {_f(r['load'], 2)} | {_f(r['qps'], 2)} | {r['requests']} | "
            f"{_f(r['success_rate'], 3)} | {_f(r['ttft_p50'])} | {_f(r['ttft_p90'])} | {_f(r['ttft_p99'])} | "
            f"{_f(itl, 1)} | {_f(r['e2e_p90'])} | {_f(r['output_tokens_per_s'], 1)} | "
            f"{_f(r['prefix_cache_hit_rate'], 3)} | {_share(r)} |"
        )
    return "\n".join(out)


def _router_order(name: str) -> tuple[int, str]:
    order = [
        "epp",
        "envoy-rr",
        "envoy-lr",
        "smg-cache_aware",
        "smg-round_robin",
        "vllm-router-cache_aware",
        "vllm-router-power_of_two",
    ]
    return (order.index(name), name) if name in order else (1 if name.startswith("epp") else 99, name)


def _by_workload(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["workload"], []).append(r)
    return out


def headline(rows: list[dict[str, Any]], baseline: str = "envoy-rr", subject: str = "epp") -> str:
    """At the highest load of each workload: every router against round-robin."""
    out = [
        "| workload | router | load | TTFT p90 s | × vs round-robin | output tok/s | × vs round-robin | success |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for wname, wrows in _by_workload(rows).items():
        top = max(r["load"] or 0 for r in wrows)
        at = {r["router"]: r for r in wrows if (r["load"] or 0) == top}
        base = at.get(baseline)
        for name in sorted(at, key=_router_order):
            r = at[name]
            t_ratio = f"{r['ttft_p90'] / base['ttft_p90']:.2f}" if base and r["ttft_p90"] and base["ttft_p90"] else "—"
            x_ratio = (
                f"{r['output_tokens_per_s'] / base['output_tokens_per_s']:.2f}"
                if base and base["output_tokens_per_s"]
                else "—"
            )
            out.append(
                f"| {wname} | {'**' + name + '**' if name == subject else name} | {_f(top, 2)} | "
                f"{_f(r['ttft_p90'])} | {t_ratio} | {_f(r['output_tokens_per_s'], 1)} | {x_ratio} | "
                f"{_f(r['success_rate'], 3)} |"
            )
    return "\n".join(out)


@cache
def _floor(workload: str, seed: int) -> float:
    w = make(workload, seed)
    return ttft_p90_floor(w, [token_ids(r) for r in w.requests])


def floor_line(rows: list[dict[str, Any]]) -> str:
    """The TTFT p90 no router can beat on these points (epp/bench/floor.py), from their workload and seed."""
    floors = sorted({_floor(r["workload"], r["seed"]) for r in rows if r.get("seed") is not None})
    if not floors:
        return ""
    span = f"{floors[0]:.3f} s" if floors[-1] - floors[0] < 5e-4 else f"{floors[0]:.3f}–{floors[-1]:.3f} s"
    return (
        f"TTFT p90 floor for any router on these prompts, at any load (cost model, idle server, only what "
        f"earlier requests could have cached; `epp/bench/floor.py`): {span}."
    )


def spread(runs: list[list[dict[str, Any]]]) -> str:
    """Min-max of TTFT p90 and throughput for points measured in more than one run."""
    key = lambda r: (r["workload"], r["router"], r["load"])
    seen: dict[tuple, list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            seen.setdefault(key(r), []).append(r)
    out = [
        "| workload | router | load | runs | TTFT p90 s (min – max) | output tok/s (min – max) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for k in sorted(seen, key=lambda k: (k[0], _router_order(k[1]), k[2] or 0)):
        rs = seen[k]
        if len(rs) < 2:
            continue
        t = [r["ttft_p90"] for r in rs if r["ttft_p90"] is not None]
        x = [r["output_tokens_per_s"] for r in rs]
        out.append(
            f"| {k[0]} | {k[1]} | {_f(k[2], 2)} | {len(rs)} | "
            f"{_f(min(t)) if t else '—'} – {_f(max(t)) if t else '—'} | {min(x):.1f} – {max(x):.1f} |"
        )
    return "\n".join(out) if len(out) > 2 else ""


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    m = meta.get("machine", {})
    lines = [
        f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python {m.get('python', '?')}; "
        f"load average at start {m.get('load_avg_at_start', '?')}; commit `{meta.get('commit', '?')}`, "
        f"{meta.get('date', '?')}."
    ]
    if meta.get("time_scales"):
        lines.append(
            "- Time scale (wall s per simulated s) per workload: "
            + ", ".join(f"{k} {v}" for k, v in sorted(meta["time_scales"].items()))
            + "."
        )
    if meta.get("capacity"):
        lines.append(
            "- Fleet capacity from the cost model (req/s, ideal prefix reuse): "
            + ", ".join(f"{k} {v}" for k, v in sorted(meta["capacity"].items()))
            + "."
        )
    if meta.get("command"):
        lines.append(f"- Command: `{meta['command']}`; wall time {meta.get('wall_s', '?')} s.")
    for name, why in sorted((meta.get("skipped") or {}).items()):
        lines.append(f"- **Skipped** `{name}`: {why}")
    return lines


def render(results: Path, plots: bool = True) -> str:
    parts = [
        "# epp-bench results",
        "",
        "Generated by `epp-bench report` from the JSON files in this directory; do not edit by hand. "
        "Latencies and rates are in simulated seconds (wall time divided by the time scale): what a fleet of "
        "real H100 servers with the same cost model would show. Method: docs/bench.md.",
        "",
    ]
    live = load(results / LIVE) if (results / LIVE).exists() else None
    des = load(results / DES) if (results / DES).exists() else None
    if live:
        fps = sorted({r["scheduler_fingerprint"] for r in live["rows"] if r.get("scheduler_fingerprint")})
        warn = (
            [
                f"- **The EPP's scheduler code changed during this run** ({len(fps)} versions): "
                "compare EPP rows across workloads with care."
            ]
            if len(fps) > 1
            else []
        )
        parts += [
            "## Live: real routers, real Envoy, epp-sim fleet",
            "",
            *_meta_lines(live["meta"]),
            *warn,
            "",
            "### Headline (highest load point)",
            "",
            headline(live["rows"]),
            "",
        ]
        for wname, wrows in _by_workload(live["rows"]).items():
            png = f"live-{wname}.png"
            if plots:
                plot_workload(wrows, f"live {wname}", results / png)
            parts += [f"### {wname}", "", f"![{wname}]({png})", "", floor_line(wrows), "", table(wrows), ""]
        repeat = load(results / REPEAT) if (results / REPEAT).exists() else None
        if repeat:
            sp = spread([live["rows"], repeat["rows"]])
            if sp:
                parts += ["### Spread over repeated runs", "", *_meta_lines(repeat["meta"]), "", sp, ""]
    if des:
        parts += [
            "## Virtual time (`epp-bench des`): epp-sim engines + the EPP's scheduler in one process",
            "",
            *_meta_lines(des["meta"]),
            "",
            "### Headline (highest load point)",
            "",
            headline(des["rows"]),
            "",
        ]
        for wname, wrows in _by_workload(des["rows"]).items():
            png = f"des-{wname}.png"
            if plots:
                plot_workload(wrows, f"des {wname}", results / png)
            parts += [f"### {wname}", "", f"![{wname}]({png})", "", floor_line(wrows), "", table(wrows), ""]
    # Linked, not inlined: `epp-bench overhead` rewrites its own file without re-rendering this one.
    parts += ["## Overhead", "", "Envoy alone vs Envoy+EPP (`epp-bench overhead`): [overhead.md](overhead.md).", ""]
    text = "\n".join(parts).rstrip() + "\n"
    return text


def write_report(results: Path, plots: bool = True) -> Path:
    text = render(results, plots)
    path = results / REPORT
    path.write_text(text)
    return path

"""`epp-bench poolscale`: the warm ladder in virtual time at 8, 32 and 128 replicas.

The canonical ladder's shapes with the per-server load held: a pool of N replicas gets N/8 times
the prefix groups (the same resident share of KV), N/8 times the requests per stage and N/8
times the arrival rate (stages at the same fractions of its capacity). As in the live ladder,
one fleet carries its cache through an unrecorded warm-up and the stages (each stage starts once
the previous one has drained), and every stage reports TTFT p90 beside the floor of its prompts.

Virtual time has a model of this EPP's scheduling (the real plugins, fed scrapes every 50 ms
of simulated time, its own in-flight counts and the prefill gate; not its flow control) and of
Envoy's round-robin and least-request; the peer routers are external programs and run only live.
The question it answers: does the order of these routers at 128 replicas stay what it is at 8
(live, bench/results/ladder*.json)?
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from epp.bench.capacity import fleet_capacity
from epp.bench.des import DesRouter, des_router, outcome, simulate, token_ids
from epp.bench.floor import FloorState
from epp.bench.ladder import DEFAULT_LOADS, stage_workload
from epp.bench.summary import Outcome, percentile, summarize
from epp.bench.workloads import Workload, poisson_arrivals

SIZES = (8, 32, 128)
ROUTERS = ("epp", "envoy-lr", "envoy-rr")
STAGE_GAP_S = 60.0  # simulated seconds between stages: the fleet drains, the cache stays


@dataclass
class ScaleOptions:
    shape: str = "shared-prefix"
    sizes: tuple[int, ...] = SIZES
    routers: tuple[str, ...] = ROUTERS
    loads: tuple[float, ...] = DEFAULT_LOADS
    seeds: tuple[int, ...] = (1,)
    stage_requests_per_8: int = 300
    warmup_requests_per_8: int = 200
    warmup_load: float = 0.8


def run_size(replicas: int, seed: int, opts: ScaleOptions, progress: Callable[[str], None] = print) -> list[dict]:
    k = replicas / 8
    warm = stage_workload(opts.shape, seed, 0, round(opts.warmup_requests_per_8 * k), replicas)
    stages = [("warmup", opts.warmup_load, warm)] + [
        (f"s{i + 1}", f, stage_workload(opts.shape, seed, i + 1, round(opts.stage_requests_per_8 * k), replicas))
        for i, f in enumerate(opts.loads)
    ]
    capacity = fleet_capacity(Workload(opts.shape, warm.requests + stages[1][2].requests, warm.fleet))
    floors_state = FloorState()
    floors = [floors_state.advance(w.requests, [token_ids(r) for r in w.requests]) for _, _, w in stages]
    # One trace: each stage's Poisson arrivals after the previous stage's last one plus a gap.
    reqs, arrivals, bounds = [], [], []
    t0 = 0.0
    for j, (_, frac, w) in enumerate(stages):
        a = poisson_arrivals(len(w.requests), frac * capacity, seed * 1000 + j)
        bounds.append((len(reqs), len(reqs) + len(w.requests)))
        reqs.extend(w.requests)
        arrivals.extend(t0 + x for x in a)
        t0 = arrivals[-1] + STAGE_GAP_S
    rows = []
    for name in opts.routers:
        router: DesRouter = des_router(name)
        wall = time.perf_counter()
        records, engines = simulate(warm.fleet, reqs, arrivals, router, seed)
        by_index = {int(r.request_id): r for r in records}
        hits = sum(e.stats.prefix_cache_hits for e in engines)
        queries = sum(e.stats.prefix_cache_queries for e in engines)
        for j, (stage, frac, _) in enumerate(stages):
            if stage == "warmup":
                continue
            lo, hi = bounds[j]
            recs = [by_index[i] for i in range(lo, hi) if i in by_index]
            outs = [outcome(r) for r in recs]
            outs += [Outcome(False, 0.0, None, None, [], 0, "")] * ((hi - lo) - len(recs))
            row = summarize(
                outs,
                router=router.name,
                workload=opts.shape,
                qps=frac * capacity,
                load=frac,
                servers=[f"sim-{x}" for x in range(len(engines))],
                prefix_hits=None,  # the engines count over the whole trace: see run_hit_rate
                prefix_queries=None,
                extra={
                    "mode": "poolscale",
                    "replicas": replicas,
                    "seed": seed,
                    "stage": stage,
                    "run_hit_rate": round(hits / queries, 4) if queries else None,
                },
            )
            fp90 = percentile(floors[j], 90)
            row["floor_p90"] = None if fp90 is None else round(fp90, 4)
            row["excess_p90"] = None if row["ttft_p90"] is None or fp90 is None else round(row["ttft_p90"] - fp90, 4)
            rows.append(row)
        progress(
            f"  {replicas:4d} replicas seed {seed} {router.name:10s} "
            + "  ".join(
                f"{r['stage']} p90 {r['ttft_p90']}"
                for r in rows
                if r["router"] == router.name and r["replicas"] == replicas
            )
            + f"  ({time.perf_counter() - wall:.0f} s)"
        )
    return rows


def run(opts: ScaleOptions, progress: Callable[[str], None] = print) -> list[dict]:
    rows: list[dict] = []
    for seed in opts.seeds:
        for n in opts.sizes:
            rows += run_size(n, seed, opts, progress)
    return rows


def ranking(rows: list[dict], replicas: int, stage: str) -> list[str]:
    """Routers best first by TTFT p90 excess over the floor (mean over seeds)."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["replicas"] == replicas and r["stage"] == stage and r["excess_p90"] is not None:
            by.setdefault(r["router"], []).append(r["excess_p90"])
    return sorted(by, key=lambda k: statistics.fmean(by[k]))


def live_ranking(live_rows: list[dict], shape: str, stage: str, routers: tuple[str, ...]) -> list[str]:
    by: dict[str, list[float]] = {}
    for r in live_rows:
        if (
            r.get("shape") == shape
            and r.get("stage") == stage
            and r["router"] in routers
            and r.get("excess_p90") is not None
        ):
            by.setdefault(r["router"], []).append(r["excess_p90"])
    return sorted(by, key=lambda k: statistics.fmean(by[k]))


def render(rows: list[dict], opts: ScaleOptions, live_rows: list[dict], wall_s: float) -> str:
    stages = [f"s{i + 1}" for i in range(len(opts.loads))]
    lines = [
        "# Pool scale in virtual time (`epp-bench poolscale`)",
        "",
        f"Shape {opts.shape}, per-server load held (N/8 x the prefix groups, requests and arrival rate),",
        f"stages at {', '.join(str(x) for x in opts.loads)} of capacity after a warm-up, seeds "
        f"{', '.join(str(s) for s in opts.seeds)}; TTFT in simulated seconds. epp-sim's engines and",
        f"this EPP's scheduler in one process (docs/bench.md); {wall_s:.0f} s of wall time on 2 shared cores.",
        "",
        "| replicas | router | "
        + " | ".join(f"{s} TTFT p90 (floor, excess)" for s in stages)
        + " | tok/s at the last stage |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for n in opts.sizes:
        for router in opts.routers:
            mine = [r for r in rows if r["replicas"] == n and r["router"] == router]
            if not mine:
                continue
            cells = []
            for s in stages:
                rs = [r for r in mine if r["stage"] == s]
                p90 = statistics.fmean(r["ttft_p90"] for r in rs)
                fl = statistics.fmean(r["floor_p90"] for r in rs)
                ex = statistics.fmean(r["excess_p90"] for r in rs)
                cells.append(f"{p90:.3f} ({fl:.3f}, {ex:+.3f})")
            tput = statistics.fmean(r["output_tokens_per_s"] for r in mine if r["stage"] == stages[-1])
            lines.append(f"| {n} | {router} | " + " | ".join(cells) + f" | {tput:,.0f} |")
    lines += ["", "## Order of the routers (best first, by TTFT p90 excess over the floor)", ""]
    lines += ["| stage | live, 8 replicas | " + " | ".join(f"virtual, {n}" for n in opts.sizes) + " |"]
    lines += ["|---|---|" + "---|" * len(opts.sizes)]
    for s in stages:
        live = live_ranking(live_rows, opts.shape, s, opts.routers)
        cells = [" > ".join(ranking(rows, n, s)) for n in opts.sizes]
        lines.append(f"| {s} | {' > '.join(live) or 'n/a'} | " + " | ".join(cells) + " |")
    notes = order_differences(rows, live_rows, opts)
    if notes:
        lines += ["", "Where virtual time orders two routers otherwise than live at 8 replicas:", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _excess(rows: list[dict], replicas: int, stage: str, router: str) -> float | None:
    xs = [
        r["excess_p90"]
        for r in rows
        if r["replicas"] == replicas and r["stage"] == stage and r["router"] == router and r["excess_p90"] is not None
    ]
    return statistics.fmean(xs) if xs else None


def order_differences(rows: list[dict], live_rows: list[dict], opts: ScaleOptions) -> list[str]:
    """Each pair of routers that virtual time puts in the other order than live, with both
    excesses and how far apart they are (two routers a few percent apart swap on noise)."""
    out = []
    for i in range(len(opts.loads)):
        stage = f"s{i + 1}"
        live = live_ranking(live_rows, opts.shape, stage, opts.routers)
        pos = {r: k for k, r in enumerate(live)}
        for n in opts.sizes:
            virt = ranking(rows, n, stage)
            for a_i, a in enumerate(virt):
                for b in virt[a_i + 1 :]:
                    if a in pos and b in pos and pos[a] > pos[b]:  # live has b before a
                        ea, eb = _excess(rows, n, stage, a), _excess(rows, n, stage, b)
                        if ea is None or eb is None:
                            continue
                        apart = abs(eb - ea) / max(abs(ea), abs(eb), 1e-9)
                        out.append(
                            f"{stage}, {n} replicas: {a} {ea:+.3f} s before {b} {eb:+.3f} s "
                            f"({apart:.0%} apart; live has {b} first)"
                        )
    return out


def load_live(paths: list[Path]) -> list[dict]:
    import json

    out: list[dict] = []
    for p in paths:
        if p.exists():
            out += json.loads(p.read_text())["rows"]
    return out

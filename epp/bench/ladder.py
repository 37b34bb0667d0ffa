"""`epp-bench ladder`: the canonical warm ladder every routing comparison is settled on.

What the published comparisons do (llm-d, SGLang; kvevents.md §4), scaled to this machine: per
shape, seed and router a fresh 8-replica epp-sim fleet and a freshly started router, one
unrecorded warm-up stage, then Poisson stages from half load past saturation on ONE prompt set
(system prompts stay, questions are new each stage), so what each server caches carries over as in
a running service. Every stage has `stage_requests` requests with output lengths drawn uniformly
from 64-256 tokens.

Shapes:
* `shared-prefix`: 24 system prompts of 4,000 tokens (18 % of the fleet's KV): no cache pressure;
* `cache-pressure`: 96 of them (73 % of the fleet's KV, ~6x one server);
* `hot-prefix`: one 3,000-token system prompt carries 70 % of the traffic, 12 cold ones the rest;
* `sharegpt-like`: log-normal prompt lengths, nothing shared.

Each stage also records the floor of its prompts (epp/bench/floor.py, carried over the whole
sequence: a prefix any earlier request sent may be cached), so a router's TTFT p90 can be read as
its excess over what no router can avoid. Latencies are simulated seconds (wall / time scale).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from epp.bench.capacity import fleet_capacity
from epp.bench.des import token_ids
from epp.bench.floor import FloorState, throughput_ceiling
from epp.bench.live import _error_kinds, _outcomes, _wait_idle
from epp.bench.loadgen import run_open_loop
from epp.bench.peers import PeerUnavailable
from epp.bench.routers import RouterSpec, start_router
from epp.bench.simfleet import start_fleet
from epp.bench.summary import percentile, summarize
from epp.bench.workloads import BenchRequest, FleetSpec, Words, Workload, poisson_arrivals

OUTPUT_RANGE = (64, 256)
SHAPES: dict[str, dict] = {
    "shared-prefix": dict(groups=24, system_len=4000, question_len=800),
    "cache-pressure": dict(groups=96, system_len=4000, question_len=400),
    "hot-prefix": dict(groups=12, system_len=3000, question_len=600, hot_share=0.7),
    "sharegpt-like": dict(mean_prompt=600),
}
# The canonical stages start at half load: a 0.3 stage alone costs as much wall time as the other
# three (its arrivals are slowest) and separates no router from another; `--full` adds it.
DEFAULT_LOADS = (0.5, 0.8, 1.1)
FULL_LOADS = (0.3, 0.5, 0.8, 1.1)
# Where this project's comparisons are decided (issue 17): no pressure and cache pressure, against
# round-robin (the Kubernetes Service), the best cache-aware peers and their load balancers.
CANONICAL_SHAPES = ("shared-prefix", "cache-pressure")
CANONICAL_ROUTERS = ("epp", "envoy-rr", "smg-cache_aware", "vllm-router-cache_aware")
FULL_ROUTERS = (
    "epp",
    "envoy-rr",
    "envoy-lr",
    "smg-cache_aware",
    "smg-power_of_two",
    "vllm-router-cache_aware",
    "vllm-router-power_of_two",
    "sglang-router-cache_aware",
)


def stage_workload(
    shape: str, seed: int, stage: int, n: int, replicas: int = 8, num_gpu_blocks: int = 4096
) -> Workload:
    """Stage `stage` (0 = warm-up) of `shape`: the prompt set is a function of `seed` alone, the
    questions, output lengths and order of (`seed`, `stage`). On a fleet of other than 8
    replicas the prefix groups scale with it, so each server's share of the prompt set (and the
    resident share of KV) stays the shape's."""
    p = dict(SHAPES[shape])
    if replicas != 8 and "groups" in p:
        p["groups"] = max(1, round(p["groups"] * replicas / 8))
    rng = random.Random(f"ladder/{shape}/{seed}/{stage}")
    w = Words(rng)
    fleet = FleetSpec(replicas, num_gpu_blocks)
    reqs: list[BenchRequest] = []
    if shape == "sharegpt-like":
        for i in range(n):
            plen = int(min(4000, max(8, rng.lognormvariate(0, 0.8) * p["mean_prompt"] * 0.73)))
            reqs.append(BenchRequest("completions", rng.randint(*OUTPUT_RANGE), prompt=w.text(plen), group=i))
        return Workload(shape, reqs, fleet, dict(p, resident_share=0.0))
    base = Words(random.Random(f"ladder/{shape}/prefixes/{seed}"))
    systems = [base.text(p["system_len"]) for _ in range(p["groups"] + (1 if "hot_share" in p else 0))]
    for _ in range(n):
        if "hot_share" in p:
            g = -1 if rng.random() < p["hot_share"] else rng.randrange(p["groups"])
        else:
            g = rng.randrange(p["groups"])
        reqs.append(
            BenchRequest(
                "completions",
                rng.randint(*OUTPUT_RANGE),
                prompt=systems[g] + "\n\n" + w.text(p["question_len"]),
                group=g,
            )
        )
    resident = len(systems) * p["system_len"] / (replicas * num_gpu_blocks * 16)
    return Workload(shape, reqs, fleet, dict(p, resident_share=round(resident, 3)))


@dataclass
class LadderOptions:
    shapes: list[str] = field(default_factory=lambda: list(CANONICAL_SHAPES))
    loads: list[float] = field(default_factory=lambda: list(DEFAULT_LOADS))
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    stage_requests: int = 300
    warmup_requests: int = 200
    warmup_load: float = 0.8
    replicas: int = 8
    max_wall_rps: float = 30.0  # 2 cores carry client + router + fleet + ~150 streamed tokens per request
    drain_s: float = 45.0


@dataclass
class Plan:
    """One shape and seed: its stages' workloads, capacity, time scale and per-stage floors."""

    shape: str
    seed: int
    stages: list[tuple[str, float, Workload]]  # (name, load, workload); first is the warm-up
    capacity: float
    time_scale: float
    floors: list[list[float]]  # per stage, per request (simulated seconds)


def plan(shape: str, seed: int, opts: LadderOptions) -> Plan:
    warm = stage_workload(shape, seed, 0, opts.warmup_requests, opts.replicas)
    stages = [("warmup", opts.warmup_load, warm)]
    stages += [
        (f"s{i + 1}", f, stage_workload(shape, seed, i + 1, opts.stage_requests, opts.replicas))
        for i, f in enumerate(opts.loads)
    ]
    # Capacity at the ideal (warm, infinite) cache: the warm-up's prefixes count as seen.
    joined = Workload(shape, warm.requests + stages[1][2].requests, warm.fleet)
    cap = fleet_capacity(joined)
    ts = round(max(1.0, max(opts.loads) * cap / opts.max_wall_rps), 2)
    state = FloorState()
    floors = [state.advance(w.requests, [token_ids(r) for r in w.requests]) for _, _, w in stages]
    return Plan(shape, seed, stages, cap, ts, floors)


def stage_arrivals(pl: Plan, k: int) -> list[float]:
    """Stage k's arrival times in simulated seconds (the same for every router)."""
    _, frac, w = pl.stages[k]
    return poisson_arrivals(len(w.requests), frac * pl.capacity, pl.seed * 1000 + k)


def stage_ceiling(pl: Plan, k: int) -> float:
    """The output tokens/s no router can exceed on stage k (epp/bench/floor.py)."""
    w = pl.stages[k][2]
    return throughput_ceiling(w.requests, [token_ids(r) for r in w.requests], pl.floors[k], stage_arrivals(pl, k))


def run_ladder(
    specs: list[RouterSpec], opts: LadderOptions, on_row: Callable[[dict], None], log: Callable[[str], None] = print
) -> dict[str, str]:
    """Every router on every shape and seed; returns {router: reason} for routers that could not run."""
    skipped: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="epp-ladder-"))
    for seed in opts.seeds:
        for shape in opts.shapes:
            pl = plan(shape, seed, opts)
            log(
                f"{shape} seed {seed}: capacity {pl.capacity:.2f} req/s (ideal cache), time scale {pl.time_scale}, "
                f"resident prefix set {pl.stages[0][2].params['resident_share']:.0%} of fleet KV"
            )
            for spec in specs:
                if spec.name in skipped:
                    continue
                t_run = time.perf_counter()
                fleet = start_fleet(pl.stages[0][2].fleet, pl.time_scale, workdir)
                try:
                    try:
                        router = start_router(spec, fleet, workdir)
                    except (PeerUnavailable, RuntimeError) as exc:
                        skipped[spec.name] = str(exc)[:300]
                        log(f"  {spec.name}: skipped: {exc}")
                        continue
                    try:
                        for k, (stage, frac, w) in enumerate(pl.stages):
                            row = _run_stage(spec, router.url, fleet, pl, k, stage, frac, w, opts)
                            if stage != "warmup":
                                on_row(row)
                            log(
                                f"  {shape:14s} s{seed} {spec.name:26s} {stage:6s} load {frac:4.2f} "
                                f"ok {row['success_rate']:.3f}  ttft p90 {row['ttft_p90']}s (floor "
                                f"{row['floor_p90']}, excess {row['excess_p90']})  tok/s {row['output_tokens_per_s']}"
                                f"  hit {row['prefix_cache_hit_rate']}  ({row['wall_s']}s)"
                            )
                    finally:
                        router.stop()
                finally:
                    fleet.stop()
                log(f"  {spec.name}: {time.perf_counter() - t_run:.0f} s")
    return skipped


def _run_stage(
    spec: RouterSpec, url: str, fleet, pl: Plan, k: int, stage: str, frac: float, w: Workload, opts: LadderOptions
) -> dict:
    ts = pl.time_scale
    qps = frac * pl.capacity
    arrivals = [a * ts for a in stage_arrivals(pl, k)]
    bodies = None
    if spec.token_ids:  # vllm-router's cache_aware hashes token ids: its best case
        import orjson

        bodies = [orjson.dumps(r.body(token_ids(r))) for r in w.requests]
    before = fleet.counters()
    t0 = time.perf_counter()
    samples = asyncio.run(run_open_loop(url, w.requests, arrivals, arrivals[-1] + opts.drain_s, None, bodies))
    _wait_idle(fleet)
    after = fleet.counters()
    floors = pl.floors[k]
    # Per request: how far above its own floor it started (the floor's p90 is the row's floor_p90).
    excess = [s.ttft / ts - floors[s.index] for s in samples if s.ok and s.ttft is not None]
    floor_p90 = percentile(floors, 90)
    row = summarize(
        _outcomes(samples, ts),
        router=spec.name,
        workload=pl.shape,
        qps=qps,
        load=frac,
        servers=fleet.pods,
        prefix_hits=after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"],
        prefix_queries=after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"],
        extra={
            "mode": "ladder",
            "stage": stage,
            "seed": pl.seed,
            "shape": pl.shape,
            "time_scale": ts,
            "capacity": round(pl.capacity, 3),
            "resident_share": w.params["resident_share"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "errors": _error_kinds(samples),
        },
    )
    row["floor_p90"] = None if floor_p90 is None else round(floor_p90, 4)
    row["excess_p90"] = None if row["ttft_p90"] is None or floor_p90 is None else round(row["ttft_p90"] - floor_p90, 4)
    p = percentile(excess, 90)
    row["request_excess_p90"] = None if p is None else round(p, 4)
    row["tput_ceiling"] = round(stage_ceiling(pl, k), 1)
    return row


def wall_estimate(opts: LadderOptions, routers: int) -> float:
    """Seconds the run should take: arrivals at each stage's wall rate plus ~8 s per stage and 15 s per start."""
    total = 0.0
    for _ in opts.seeds:
        for _ in opts.shapes:
            per = opts.warmup_requests / (opts.max_wall_rps * opts.warmup_load / max(opts.loads)) + 8
            per += sum(opts.stage_requests / (opts.max_wall_rps * f / max(opts.loads)) + 8 for f in opts.loads)
            total += routers * (per + 15)
    return total

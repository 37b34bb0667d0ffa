"""`epp-bench run`: real routers in front of a real (simulated) fleet, one ladder of load points each.

For each workload and router: a fresh epp-sim fleet and a freshly started router, then the load
points in ascending order. Each point uses its own prompts (seeded by the point), so caches left by
the previous point do not help it; the simulators' counters are read before and after each point.
Everything is bounded: a point stops at its deadline and unfinished requests count as failures.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from epp.bench.capacity import fleet_capacity
from epp.bench.des import token_ids
from epp.bench.fingerprint import scheduler_fingerprint
from epp.bench.loadgen import Sample, run_open_loop
from epp.bench.peers import PeerUnavailable
from epp.bench.routers import RouterSpec, start_router
from epp.bench.simfleet import SimFleet, start_fleet
from epp.bench.summary import Outcome, summarize
from epp.bench.workloads import Workload, make, poisson_arrivals

HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
LORA_LOADS = "epp_sim:lora_adapter_loads_total"


@dataclass
class LiveOptions:
    loads: list[float]
    seed: int = 1
    replicas: int = 8
    max_wall_rps: float = 40.0  # the 2-core machine's comfortable rate for client + router + fleet
    min_time_scale: float = 1.0
    drain_s: float = 45.0  # wall seconds a point may run past its last arrival
    workload_params: dict[str, dict] = field(default_factory=dict)


def time_scale_for(top_qps: float, opts: LiveOptions) -> float:
    """Slow simulated time down just enough that the top load point stays within `max_wall_rps`."""
    return round(max(opts.min_time_scale, top_qps / opts.max_wall_rps), 2)


def workload_at(name: str, point_seed: int, opts: LiveOptions) -> Workload:
    return make(name, point_seed, replicas=opts.replicas, **opts.workload_params.get(name, {}))


def _wait_idle(fleet: SimFleet, timeout: float = 30.0) -> None:
    """Let aborted or late requests leave the engines before the next point starts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = 0.0
        for url in fleet.urls:
            for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    busy += float(line.rsplit(" ", 1)[1])
        if busy == 0:
            return
        time.sleep(0.2)


def _outcomes(samples: list[Sample], ts: float) -> list[Outcome]:
    def sim(x: float | None) -> float | None:
        return None if x is None else x / ts

    return [
        Outcome(s.ok, s.start / ts, sim(s.ttft), sim(s.e2e), [g / ts for g in s.itls], s.output_tokens, s.pod)
        for s in samples
    ]


def run_live(
    workloads: list[str],
    routers: list[RouterSpec],
    opts: LiveOptions,
    on_row: Callable[[dict], None],
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run every router on every workload; returns {router: reason} for routers that were skipped."""
    skipped: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-"))
    for wname in workloads:
        base = workload_at(wname, opts.seed * 1000, opts)
        cap = fleet_capacity(base)
        ts = time_scale_for(max(opts.loads) * cap, opts)
        log(
            f"{wname}: {len(base.requests)} requests per point, fleet capacity {cap:.1f} req/s (cost model), "
            f"time scale {ts}"
        )
        for spec in routers:
            if spec.name in skipped:
                continue
            fleet = start_fleet(base.fleet, ts, workdir)
            try:
                try:
                    router = start_router(spec, fleet, workdir)
                except PeerUnavailable as exc:
                    skipped[spec.name] = str(exc)
                    log(f"  {spec.name}: skipped: {exc}")
                    continue
                except RuntimeError as exc:
                    skipped[spec.name] = f"did not start: {exc}"[:300]
                    log(f"  {spec.name}: skipped: {exc}")
                    continue
                # The EPP process loaded the scheduler code as it was when it started.
                fp = scheduler_fingerprint() if spec.kind == "epp" else None
                try:
                    for k, frac in enumerate(opts.loads):
                        row = _run_point(wname, spec, router.url, fleet, k, frac, cap, ts, opts, log)
                        if fp:
                            row["scheduler_fingerprint"] = fp
                        on_row(row)
                finally:
                    router.stop()
            finally:
                fleet.stop()
    return skipped


def _run_point(
    wname: str,
    spec: RouterSpec,
    url: str,
    fleet: SimFleet,
    k: int,
    frac: float,
    cap: float,
    ts: float,
    opts: LiveOptions,
    log: Callable[[str], None],
) -> dict:
    point_seed = opts.seed * 1000 + k
    w = workload_at(wname, point_seed, opts)
    qps = frac * cap
    arrivals = [a * ts for a in poisson_arrivals(len(w.requests), qps, point_seed)]
    deadline = arrivals[-1] + opts.drain_s
    bodies = None
    if spec.token_ids:  # same tokens, as ids (the simulators tokenize text to exactly these ids)
        bodies = [orjson.dumps(r.body(token_ids(r) if r.api == "completions" else None)) for r in w.requests]
    before = fleet.counters()
    t0 = time.perf_counter()
    marks = {len(w.requests) * q // 4 for q in (1, 2, 3)}

    def progress(done: int, total: int) -> None:
        if done in marks:
            log(f"    {spec.name} load {frac:.2f}: {done}/{total} done ({time.perf_counter() - t0:.0f}s)")

    samples = asyncio.run(run_open_loop(url, w.requests, arrivals, deadline, progress, bodies))
    _wait_idle(fleet)
    after = fleet.counters()
    row = summarize(
        _outcomes(samples, ts),
        router=spec.name,
        workload=wname,
        qps=qps,
        load=frac,
        servers=fleet.pods,
        prefix_hits=after[HITS] - before[HITS],
        prefix_queries=after[QUERIES] - before[QUERIES],
        extra={
            "mode": "live",
            "seed": point_seed,
            "time_scale": ts,
            "wall_s": round(time.perf_counter() - t0, 1),
            "errors": _error_kinds(samples),
            "lora_loads": int(after[LORA_LOADS] - before[LORA_LOADS]),
        },
    )
    log(
        f"  {wname:13s} {spec.name:24s} load {frac:4.2f} qps {qps:6.2f}  ok {row['success_rate']:.3f}  "
        f"ttft p50/p90 {row['ttft_p50']}/{row['ttft_p90']}s  tok/s {row['output_tokens_per_s']}  "
        f"hit {row['prefix_cache_hit_rate']}  ({row['wall_s']}s)"
    )
    return row


def _error_kinds(samples: list[Sample]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = f"HTTP {s.status}" if s.status not in (0, 200) else (s.error.split(":")[0] or "unknown")
            kinds[key] = kinds.get(key, 0) + 1
    return dict(sorted(kinds.items()))

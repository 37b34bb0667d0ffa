"""`epp-bench kvcache`: precise vs approximate prefix index on a warm ladder under cache pressure.

Per shape and router: a fresh epp-sim fleet that publishes vLLM KV events (and answers
replays), the router, one unrecorded warm-up stage, then Poisson stages from light load past
saturation on ONE prompt set — the system prompts stay, the questions are new each stage —
so what each server caches carries over between stages as in a running service.

Shapes:
* `pressure`: 96 system prompts of 4,000 tokens = 73 % of the fleet's KV (8 x 4,096 blocks x
  16 tokens), ~6x one server (llm-d's "73 % capacity" benchmark, kvevents.md §4, scaled);
* `low`: 24 of them = 18 % of the fleet's KV: everything fits, nothing to be precise about.

Routers: `approx` (this project's default config), `precise` (epp-precise.yaml: KV events +
the servers' /tokenize), `envoy-lr` for scale, and optionally the same EPP configs as two
active-active replicas behind one Envoy (`approx-x2`, `precise-x2`). Latencies are simulated
seconds (wall / time scale), as everywhere in epp-bench.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from epp.bench.capacity import fleet_capacity
from epp.bench.configs import resolve_config
from epp.bench.live import _error_kinds, _outcomes, _wait_idle
from epp.bench.loadgen import run_open_loop
from epp.bench.routers import RouterSpec, start_router
from epp.bench.simfleet import start_fleet
from epp.bench.summary import summarize
from epp.bench.workloads import cache_pressure, poisson_arrivals

SHAPES: dict[str, dict] = {
    "pressure": dict(groups=96, output_len=256),
    "low": dict(groups=24),
}
DEFAULT_LOADS = (0.3, 0.6, 0.8, 1.0, 1.2)


def routers(names: list[str]) -> list[RouterSpec]:
    out = []
    for n in names:
        base, _, x = n.partition("-x")
        replicas = int(x) if x else 1
        if base == "approx":
            out.append(RouterSpec(n, "epp", config=resolve_config("epp-default"), epp_replicas=replicas))
        elif base == "precise":
            out.append(RouterSpec(n, "epp", config=resolve_config("epp-precise"), epp_replicas=replicas))
        elif n in ("envoy-lr", "envoy-rr"):
            out.append(RouterSpec(n, "envoy", "least_request" if n == "envoy-lr" else "round_robin"))
        else:
            raise ValueError(f"unknown router {n!r} (approx, precise, approx-x2, precise-x2, envoy-lr, envoy-rr)")
    return out


@dataclass
class KvOptions:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    loads: list[float] = field(default_factory=lambda: list(DEFAULT_LOADS))
    warmup_load: float = 0.5
    stage_requests: int = 300
    seed: int = 1
    max_wall_rps: float = 30.0
    drain_s: float = 45.0


def run_kvcache(
    specs: list[RouterSpec],
    opts: KvOptions,
    on_row: Callable[[dict], None],
    log: Callable[[str], None] = print,
    during: Callable[[object, object, int], None] | None = None,
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="epp-kvbench-"))
    for shape in opts.shapes:
        params = SHAPES[shape]
        base = cache_pressure(opts.seed * 1000, n=opts.stage_requests, prefix_seed=opts.seed, **params)
        cap = fleet_capacity(base)
        ts = round(max(1.0, max(opts.loads) * cap / opts.max_wall_rps), 2)
        log(
            f"{shape}: resident prefix set {base.params['resident_share']:.0%} of fleet KV, "
            f"{opts.stage_requests} requests per stage, capacity {cap:.1f} req/s (ideal cache), time scale {ts}"
        )
        for spec in specs:
            fleet = start_fleet(base.fleet, ts, workdir)
            try:
                router = start_router(spec, fleet, workdir)
                try:
                    stages = [("warmup", opts.warmup_load)] + [(f"s{i}", f) for i, f in enumerate(opts.loads)]
                    for k, (stage, frac) in enumerate(stages):
                        w = cache_pressure(
                            opts.seed * 1000 + k + 1, n=opts.stage_requests, prefix_seed=opts.seed, **params
                        )
                        qps = frac * cap
                        arrivals = [a * ts for a in poisson_arrivals(len(w.requests), qps, opts.seed * 1000 + k)]
                        deadline = arrivals[-1] + opts.drain_s
                        before = fleet.counters()
                        t0 = time.perf_counter()
                        if during is not None:
                            during(router, fleet, k)
                        samples = asyncio.run(run_open_loop(router.url, w.requests, arrivals, deadline))
                        _wait_idle(fleet)
                        after = fleet.counters()
                        row = summarize(
                            _outcomes(samples, ts),
                            router=spec.name,
                            workload=f"cache-{shape}",
                            qps=qps,
                            load=frac,
                            servers=fleet.pods,
                            prefix_hits=after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"],
                            prefix_queries=(
                                after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
                            ),
                            extra={
                                "mode": "live",
                                "stage": stage,
                                "seed": opts.seed,
                                "time_scale": ts,
                                "shape": shape,
                                "resident_share": base.params["resident_share"],
                                "wall_s": round(time.perf_counter() - t0, 1),
                                "errors": _error_kinds(samples),
                                "epp_replicas": spec.epp_replicas,
                            },
                        )
                        log(
                            f"  {shape:8s} {spec.name:12s} {stage:6s} load {frac:4.2f}  ok {row['success_rate']:.3f}  "
                            f"ttft p50/p90 {row['ttft_p50']}/{row['ttft_p90']}s  tok/s {row['output_tokens_per_s']}  "
                            f"hit {row['prefix_cache_hit_rate']}  ({row['wall_s']}s)"
                        )
                        if stage != "warmup":
                            on_row(row)
                finally:
                    router.stop()
            finally:
                fleet.stop()

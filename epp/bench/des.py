"""`epp-bench des`: the same workloads in virtual time, epp-sim's engines and the EPP's scheduler in one process.

The EPP sees what it sees live: endpoint metrics refreshed every `scrape_interval` seconds (not
instantly), its own in-flight counters added at the pick (uncached prompt tokens), the prefill
part released at the first token and the rest when the response ends (as
`epp/requestcontrol/director.py` does), its prefix index fed by `pre_request`, and the
`response_complete` plugins called with the usage. Plugins' random generators are seeded. Baselines
are Envoy's round-robin and least-request (power of two choices on active requests, Envoy's
default `choice_count` 2). Deterministic for a seed: no clocks, seeded random choices.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import orjson

from epp.bench.configs import resolve_config
from epp.bench.summary import Outcome, summarize
from epp.bench.workloads import MODEL, BenchRequest, FleetSpec, Workload, poisson_arrivals
from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.flowcontrol.prefill_gate import PrefillGate
from epp.requestcontrol.director import uncached_tokens
from epp.requests.usage import Usage
from epp.scheduling.config import load_config
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import SchedulingRequest
from epp.sim.costmodel import CostModel
from epp.sim.engine import Engine, EngineConfig, StepResult
from epp.sim.tokenizer import Tokenizer, render_chat
from epp.sim.vtime import TraceItem, VirtualFleet

CHARS_PER_TOKEN = 4  # the director's estimate of prompt tokens
DES_ROUTERS = ("epp", "envoy-rr", "envoy-lr")

_tokenizer = Tokenizer()


def token_ids(req: BenchRequest) -> list[int]:
    """What epp-sim's HTTP server tokenizes for this body (see epp/sim/server.py `_prepare`)."""
    if req.api == "chat":
        return _tokenizer.encode(render_chat([{"role": r, "content": c} for r, c in req.messages or ()]))
    return _tokenizer.encode(req.prompt or "", add_bos=True)


def prefix_input(req: BenchRequest) -> bytes:
    """What the EPP's request parser hashes for this body (epp/requests/body.py `_prefix_input`)."""
    if req.api == "chat":
        return orjson.dumps([{"role": r, "content": c} for r, c in req.messages or ()])
    return (req.prompt or "").encode()


@dataclass
class DesRouter:
    name: str
    config_text: str | None = None  # EndpointPickerConfig for the EPP; None = its built-in default


class _Policy:
    """A route function plus the bookkeeping the live router would do at request end."""

    def route(self, i: int, fleet: VirtualFleet) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    def first_token(self, i: int) -> None:
        pass

    def finished(self, i: int, replica: int, rec_usage: Usage) -> None:
        pass


class _RoundRobin(_Policy):
    def __init__(self, n: int) -> None:
        self.n, self.next = n, 0

    def route(self, i: int, fleet: VirtualFleet) -> int:
        idx = self.next
        self.next = (idx + 1) % self.n
        return idx


class _LeastRequest(_Policy):
    """Envoy LEAST_REQUEST with equal weights: two random hosts, the one with fewer active requests."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.active, self.rng = n, [0] * n, random.Random(f"envoy-lr/{seed}")

    def route(self, i: int, fleet: VirtualFleet) -> int:
        a, b = self.rng.randrange(self.n), self.rng.randrange(self.n)
        idx = a if self.active[a] <= self.active[b] else b
        self.active[idx] += 1
        return idx

    def finished(self, i: int, replica: int, rec_usage: Usage) -> None:
        self.active[replica] -= 1


class _Epp(_Policy):
    def __init__(
        self,
        config_text: str | None,
        engines: list[Engine],
        requests: list[BenchRequest],
        block_size: int,
        num_blocks: int,
        max_loras: int,
        seed: int,
    ) -> None:
        self.sched = Scheduler(load_config(config_text, "bench config"))
        config = self.sched.config
        # Profiles without a picker get an implicit max-score-picker that is not in `plugins`.
        named = [id(p) for p in config.plugins.values()]
        implicit = {
            f"{prof}/picker": p.picker
            for prof, p in config.profiles.items()
            if p.picker is not None and id(p.picker) not in named
        }
        for name, plugin in {**config.plugins, **implicit}.items():
            if isinstance(getattr(plugin, "rng", None), random.Random):
                plugin.rng.seed(f"{seed}/{name}")
        self.engines = engines
        self.requests = requests
        self.endpoints = [
            Endpoint(f"127.0.0.1:{8000 + k}", "127.0.0.1", 8000 + k, pod_name=f"sim-{k}") for k in range(len(engines))
        ]
        self.block_size, self.num_blocks, self.max_loras = block_size, num_blocks, max_loras
        self.open: dict[int, tuple[Endpoint, int, SchedulingRequest, object]] = {}
        self.prefill_pending: set[int] = set()
        gates = self.sched.config.plugins_of(PrefillGate)
        self.gate: PrefillGate | None = gates[0] if gates else None
        self.long: set[int] = set()
        self.first_seen: dict[int, float] = {}
        self.fleet: VirtualFleet | None = None
        self.recheck_pending = False
        self.held_at: dict[int, tuple[Endpoint, int]] = {}
        self.tried: dict[int, SchedulingRequest] = {}  # held requests keep their prompt's hashes

    def scrape(self) -> None:
        now = time.monotonic()  # plugins compare update_time with the real clock (staleness)
        for ep, eng in zip(self.endpoints, self.engines, strict=True):
            ep.metrics = EndpointMetrics(
                waiting_queue_size=eng.num_waiting,
                running_requests_size=eng.num_running,
                kv_cache_usage_percent=eng.kv_usage,
                active_models=frozenset(eng.running_loras()),
                waiting_models=frozenset(eng.waiting_loras()),
                max_active_models=self.max_loras,
                cache_block_size=self.block_size,
                cache_num_blocks=self.num_blocks,
                prefix_cache_queries=float(eng.stats.prefix_cache_queries),
                prefix_cache_hits=float(eng.stats.prefix_cache_hits),
                update_time=now,
            )

    def route(self, i: int, fleet: VirtualFleet) -> int | None:
        if i in self.held_at:
            held_ep, held_tokens = self.held_at.pop(i)
            held_ep.inflight.held_tokens -= held_tokens
        req = self.requests[i]
        earlier = self.tried.pop(i, None)
        pin = earlier.prefix_input if earlier is not None else prefix_input(req)
        tokens = len(pin) // CHARS_PER_TOKEN
        sreq = SchedulingRequest(
            f"r{i}",
            req.model,
            incoming_model=req.model,
            api="chat-completions" if req.api == "chat" else "completions",
            prefix_input=pin,
            prompt_tokens=tokens,
            stream=True,
        ).reuse_hashes(earlier)
        result, cycle = self.sched.schedule(sreq, list(self.endpoints))
        ep = result.targets[0]
        uncached = uncached_tokens(cycle, ep, tokens)
        gate = self.gate
        long = gate is not None and gate.is_long(uncached)
        if long:
            # As the director: held while the endpoint has enough long prefills outstanding, tried
            # again when one finishes and at every recheck interval, let through after maxWait.
            first = self.first_seen.setdefault(i, fleet.now)
            if gate.holds(ep, uncached, fleet.now - first, len(self.endpoints)):
                ep.inflight.held_tokens += uncached
                self.held_at[i] = (ep, uncached)
                self.tried[i] = sreq
                self.fleet = fleet
                if not self.recheck_pending:
                    self.recheck_pending = True
                    fleet.call_at(fleet.now + gate.recheck, self._recheck)
                return None
            self.long.add(i)
        self.sched.pre_request(cycle, sreq, result)
        ep.inflight.add(uncached, long)
        self.prefill_pending.add(i)
        self.open[i] = (ep, uncached, sreq, result)
        return self.endpoints.index(ep)

    def _recheck(self) -> None:
        self.recheck_pending = False
        if self.fleet is not None and self.fleet.parked:
            self.fleet.retry_parked()

    def _prefill_finished(self, i: int) -> None:
        self.prefill_pending.discard(i)
        if i in self.long:
            self.long.discard(i)
            if self.fleet is not None and self.fleet.parked:
                fleet = self.fleet
                fleet.call_at(fleet.now, self._released)

    def _released(self) -> None:
        """As FlowController.gate_released: one pass over the held requests, oldest first, until
        one is placed; after that more tries while some endpoint has a free slot, at most one
        per endpoint. (An earlier model repeated the whole pass up to once per endpoint: up to
        endpoints x held scheduling passes per release, which the live EPP never does, and
        which kept a 128-replica run from finishing.)"""
        fleet, gate = self.fleet, self.gate
        assert fleet is not None and gate is not None
        extra = len(self.endpoints)

        def go_on(placed: bool) -> bool:
            nonlocal extra
            if not placed:
                return True
            if extra <= 0 or not any(e.inflight.long_prefills < gate.max_per_endpoint for e in self.endpoints):
                return False
            extra -= 1
            return True

        fleet.retry_parked(go_on)

    def first_token(self, i: int) -> None:
        ep, tokens, _, _ = self.open[i]
        ep.inflight.prefill_done(tokens, i in self.long)
        self._prefill_finished(i)

    def finished(self, i: int, replica: int, usage: Usage) -> None:
        ep, tokens, sreq, result = self.open.pop(i)
        pending = i in self.prefill_pending
        ep.inflight.release(tokens, pending, i in self.long)
        if pending:
            self._prefill_finished(i)
        for plugin in self.sched.config.response_complete:
            plugin.response_complete(sreq, result, usage)


def run_point(
    workload: Workload,
    router: DesRouter,
    qps: float,
    seed: int,
    load: float | None = None,
    scrape_interval: float = 0.05,
) -> dict:
    """One load point: a fresh virtual fleet, Poisson arrivals at `qps`, every request to completion."""
    reqs = workload.requests
    arrivals = poisson_arrivals(len(reqs), qps, seed)
    records, engines = simulate(workload.fleet, reqs, arrivals, router, seed, scrape_interval)
    outs = [outcome(rec) for rec in records]
    hits = sum(e.stats.prefix_cache_hits for e in engines)
    queries = sum(e.stats.prefix_cache_queries for e in engines)
    return summarize(
        outs + [Outcome(False, 0.0, None, None, [], 0, "")] * (len(reqs) - len(records)),
        router=router.name,
        workload=workload.name,
        qps=qps,
        load=load,
        servers=[f"sim-{k}" for k in range(len(engines))],
        prefix_hits=hits,
        prefix_queries=queries,
        extra={
            "mode": "des",
            "seed": seed,
            "preemptions": sum(e.stats.preemptions for e in engines),
            "lora_loads": sum(e.stats.lora_loads for e in engines),
        },
    )


def outcome(rec) -> Outcome:
    """A virtual fleet's record as the live harness's Outcome (server named sim-<replica>)."""
    return Outcome(
        True,
        rec.arrival,
        rec.ttft,
        rec.e2e,
        [b - a for a, b in pairwise(rec.token_times)],
        rec.completion_tokens,
        f"sim-{rec.replica}",
    )


def simulate(
    spec: FleetSpec,
    reqs: list[BenchRequest],
    arrivals: list[float],
    router: DesRouter,
    seed: int,
    scrape_interval: float = 0.05,
) -> tuple[list, list[Engine]]:
    """Requests at their arrival times through `router` onto a fresh virtual fleet, every one to
    completion: the records (`request_id` = index into `reqs`) and the engines."""
    cfg = EngineConfig(
        num_gpu_blocks=spec.num_gpu_blocks,
        max_model_len=min(131_072, spec.num_gpu_blocks * 16),
        max_loras=spec.max_loras,
        hash_seed=0,
    )
    lora_ids = {a: k + 1 for k, a in enumerate(spec.lora_modules)}
    engines = [Engine(cfg, CostModel(), lora_ids=lora_ids) for _ in range(spec.replicas)]
    fleet = VirtualFleet(engines, keep_token_times=True)
    trace = [
        TraceItem(
            arrivals[i], token_ids(r), r.max_tokens, lora=None if r.model == MODEL else r.model, request_id=str(i)
        )
        for i, r in enumerate(reqs)
    ]
    policy: _Policy
    if router.name == "envoy-rr":
        policy = _RoundRobin(len(engines))
    elif router.name == "envoy-lr":
        policy = _LeastRequest(len(engines), seed)
    else:
        policy = _Epp(router.config_text, engines, reqs, cfg.block_size, cfg.num_gpu_blocks, cfg.max_loras, seed)
        epp = policy
        horizon = arrivals[-1] if arrivals else 0.0
        t = 0.0
        while t <= horizon:  # scrapes only while requests still arrive: the loop must end
            fleet.call_at(t, epp.scrape)
            t += scrape_interval

    done: set[str] = set()

    def on_step(idx: int, res: StepResult) -> None:
        for ev in res.tokens:
            if ev.index == 0:
                policy.first_token(int(ev.request.request_id))
            if ev.finished and ev.request.request_id not in done:
                r = ev.request
                done.add(r.request_id)
                policy.finished(
                    int(r.request_id),
                    idx,
                    Usage(
                        r.num_prompt_tokens,
                        r.num_output_tokens,
                        r.num_prompt_tokens + r.num_output_tokens,
                        max(0, r.num_cached_tokens),
                    ),
                )

    fleet.on_step = on_step
    records = fleet.run_trace(trace, route=lambda item, f: policy.route(int(item.request_id), f))
    return records, engines


def des_router(spec: str) -> DesRouter:
    """`epp`, `epp:<config file or named config>`, `envoy-rr`, `envoy-lr`."""
    if spec in ("envoy-rr", "envoy-lr", "epp"):
        return DesRouter(spec)
    if spec.startswith("epp:"):
        path = resolve_config(spec[4:])
        return DesRouter(f"epp[{path.stem}]", Path(path).read_text())
    raise ValueError(f"virtual-time mode has no model of router {spec!r} (use epp, epp:<config>, envoy-rr, envoy-lr)")


def run_ladder(
    make: Callable[[int], Workload],
    routers: list[DesRouter],
    loads: list[float],
    capacity: float,
    seed: int,
    progress: Callable[[str], None] = print,
    scrape_interval: float = 0.05,
) -> list[dict]:
    rows = []
    for k, frac in enumerate(loads):
        w = make(seed * 1000 + k)
        for r in routers:
            t0 = time.perf_counter()
            row = run_point(w, r, frac * capacity, seed * 1000 + k, load=frac, scrape_interval=scrape_interval)
            rows.append(row)
            progress(
                f"  des {w.name:14s} {r.name:22s} load {frac:4.2f} qps {row['qps']:7.2f}  "
                f"ttft p90 {row['ttft_p90']:.3f}s  tok/s {row['output_tokens_per_s']:8.1f}  "
                f"hit {row['prefix_cache_hit_rate']}  ({time.perf_counter() - t0:.1f}s)"
            )
    return rows

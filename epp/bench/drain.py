"""`epp-bench drain`: how fast flow control empties a backlog (in process, no network).

N requests queue while the pool has no endpoint (scale from zero); then endpoints appear and the
time until the last one is dispatched is measured. Two levels, side by side in one run:
- `controller`: the flow controller alone (the dispatch itself: policies, queues, metrics);
- `director`: each dispatch runs the real director — scheduling with the chosen config,
  in-flight accounting, the routing decision — as it does in the EPP.
The reference dispatches one request per 1 ms tick (a backlog drains at about 1,000/s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import orjson
from prometheus_client import CollectorRegistry

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol.admission import LegacyAdmission
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.ticket import Outcome
from epp.observability.flowmetrics import FlowMetrics
from epp.observability.metrics import EppMetrics
from epp.requestcontrol.director import Director
from epp.requestcontrol.exchange import IncomingRequest
from epp.scheduling.config import load_config
from epp.scheduling.scheduler import Scheduler

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {{maxConcurrency: {cap}}}
{scheduling}
saturationDetector: {{pluginRef: concurrency-detector}}
flowControl:
  defaultRequestTTL: 0s
"""
SCHEDULING = {
    "epp-default": "- type: approx-prefix-cache-producer\n- type: estimated-ttft-scorer\n- type: max-score-picker\n"
    "schedulingProfiles:\n- name: default\n  plugins: [{pluginRef: estimated-ttft-scorer},"
    " {pluginRef: max-score-picker}]",
    "queue": "- type: queue-scorer\n- type: max-score-picker",
}


@dataclass
class DrainResult:
    level: str
    requests: int
    endpoints: int
    seconds: float
    dispatched: int

    @property
    def rate(self) -> float:
        return self.dispatched / self.seconds if self.seconds else 0.0


class _Accounting:
    """The controller-level waiter: takes a slot on the least loaded endpoint, nothing else."""

    __slots__ = ("pool",)

    def __init__(self, pool: list[Endpoint]) -> None:
        self.pool = pool

    def try_dispatch(self) -> bool:
        e = self.pool[0] if len(self.pool) == 1 else min(self.pool, key=lambda x: x.inflight.requests)
        e.inflight.add(10)
        return True

    def evicted(self, err) -> None:  # pragma: no cover - no TTL in this benchmark
        raise AssertionError(err)


def _endpoints(n: int) -> list[Endpoint]:
    eps = [Endpoint(f"127.0.0.1:{9000 + i}", "127.0.0.1", 9000 + i) for i in range(n)]
    now = time.monotonic()
    for e in eps:
        e.metrics.update_time = now + 3600  # fresh for the whole run
    return eps


async def _drain(fc: FlowController, add_endpoints, n: int, until_done) -> float:
    add_endpoints()
    t0 = time.perf_counter()
    fc.kick()
    while not until_done():
        await asyncio.sleep(0)
    return time.perf_counter() - t0


async def controller_drain(n: int, endpoints: int) -> DrainResult:
    pool: list[Endpoint] = []
    cfg = load_config(CONFIG.format(cap=n, scheduling=SCHEDULING["queue"]))
    fc = FlowController(cfg.flow, lambda: pool, FlowMetrics(CollectorRegistry(), "bench"))
    waiter = _Accounting(pool)
    tickets = [fc.submit(waiter, f"tenant-{i % 4}", 0, 1000, 250, {}, "m", "m") for i in range(n)]
    assert fc.queued == n
    eps = _endpoints(endpoints)
    seconds = await _drain(fc, lambda: pool.extend(eps), n, lambda: fc.queued == 0)
    return DrainResult("controller", n, endpoints, seconds, sum(t.outcome is Outcome.DISPATCHED for t in tickets))


async def director_drain(n: int, endpoints: int, scheduling: str) -> DrainResult:
    ds = Datastore()
    cfg = load_config(CONFIG.format(cap=n, scheduling=SCHEDULING[scheduling]))
    metrics = EppMetrics()
    fc = FlowController(cfg.flow, ds.endpoints, FlowMetrics(metrics.registry, "bench"))
    director = Director(ds, Scheduler(cfg), metrics, LegacyAdmission(fc.detector), fc)
    held = []
    for i in range(n):
        body = orjson.dumps(
            {"model": "m", "prompt": f"system prompt {i % 50} " * 20 + f"question {i}", "max_tokens": 16}
        )
        ex = director.exchange()
        req = IncomingRequest(
            {":path": "/v1/completions", ":method": "POST", "x-gateway-inference-fairness-id": f"tenant-{i % 4}"}, body
        )
        assert ex.route(req) is None  # queued: the pool is empty
        held.append(ex)
    eps = _endpoints(endpoints)
    seconds = await _drain(fc, lambda: ds.replace_all(eps), n, lambda: fc.queued == 0)
    routed = sum(ex.pending is not None and not isinstance(ex.pending, Exception) for ex in held)
    return DrainResult(f"director ({scheduling})", n, endpoints, seconds, routed)


async def run(n: int = 10_000, endpoints: int = 10, repeats: int = 3) -> list[tuple[str, list[DrainResult]]]:
    out: list[tuple[str, list[DrainResult]]] = []
    for name, make in (
        ("controller", lambda: controller_drain(n, endpoints)),
        ("director (queue-scorer)", lambda: director_drain(n, endpoints, "queue")),
        ("director (epp-default)", lambda: director_drain(n, endpoints, "epp-default")),
    ):
        results = [await make() for _ in range(repeats)]
        out.append((name, results))
    return out


def report(rows: list[tuple[str, list[DrainResult]]]) -> str:
    lines = [
        "| level | requests | endpoints | dispatches/s (median) | range | all dispatched |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in rows:
        rates = [r.rate for r in results]
        ok = all(r.dispatched == r.requests for r in results)
        lines.append(
            f"| {name} | {results[0].requests:,} | {results[0].endpoints} | "
            f"{statistics.median(rates):,.0f} | {min(rates):,.0f}–{max(rates):,.0f} | {ok} |"
        )
    return "\n".join(lines)


def main(n: int = 10_000, endpoints: int = 10, repeats: int = 3) -> str:
    text = report(asyncio.run(run(n, endpoints, repeats)))
    print(text)
    return text


if __name__ == "__main__":  # pragma: no cover
    main()

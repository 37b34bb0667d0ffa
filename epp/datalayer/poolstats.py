"""Pool-level aggregates behind the `inference_pool_*` gauges (gie-epp.md §3.3, §6).

Averages and the ready count cover only endpoints whose metrics are fresh (age <= the
`--metrics-staleness-threshold`), as the reference does; the per-pod queue size covers every
endpoint, whatever its age, also as the reference does. Unlike the reference, which skips
the update when nothing is fresh (leaving the last averages on display forever), an empty
fresh set yields ready=0 and zero averages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from epp.datalayer.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class PoolStats:
    ready: int = 0  # endpoints with fresh metrics
    avg_kv: float = 0.0  # mean kv_cache_usage_percent (0..1) over fresh endpoints
    avg_queue: float = 0.0  # mean waiting_queue_size over fresh endpoints
    avg_running: float = 0.0  # mean running_requests_size over fresh endpoints
    per_pod_queue: dict[str, int] = field(default_factory=dict)  # endpoint name -> queue


def pool_stats(endpoints: Iterable[Endpoint], staleness_threshold: float, now: float) -> PoolStats:
    """`now` is a time.monotonic() reading (the clock `update_time` uses)."""
    ready = 0
    kv = queue = running = 0.0
    per_pod: dict[str, int] = {}
    for ep in endpoints:
        m = ep.metrics
        per_pod[ep.name] = m.waiting_queue_size
        if not m.stale(staleness_threshold, now):
            ready += 1
            kv += m.kv_cache_usage_percent
            queue += m.waiting_queue_size
            running += m.running_requests_size
    if ready == 0:
        return PoolStats(per_pod_queue=per_pod)
    return PoolStats(ready, kv / ready, queue / ready, running / ready, per_pod)

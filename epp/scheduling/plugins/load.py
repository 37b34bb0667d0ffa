"""Load scorers over scraped metrics: queue depth, running requests, KV-cache use."""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Category, Scorer, register
from epp.scheduling.types import CycleState, SchedulingRequest


def min_max_inverted(values: list[float]) -> list[float]:
    """(max - v) / (max - min); all equal -> 1.0 (reference queue-scorer)."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


@register
class QueueScorer(Scorer):
    type_name = "queue-scorer"
    category = Category.DISTRIBUTION

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        return min_max_inverted([e.metrics.waiting_queue_size for e in endpoints])


@register
class RunningRequestsScorer(Scorer):
    type_name = "running-requests-size-scorer"
    category = Category.DISTRIBUTION

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        return min_max_inverted([e.metrics.running_requests_size for e in endpoints])


@register
class KVCacheUtilizationScorer(Scorer):
    type_name = "kv-cache-utilization-scorer"
    category = Category.DISTRIBUTION

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        return [1.0 - e.metrics.kv_cache_usage_percent for e in endpoints]

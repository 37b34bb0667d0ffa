"""Load scorers over scraped metrics: queue depth, running requests, KV-cache use."""

from __future__ import annotations

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Category, Params, Scorer, register
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


class TokenLoadParams(Params):
    queue_threshold_tokens: int = Field(4_194_304, alias="queueThresholdTokens", gt=0)


@register
class TokenLoadScorer(Scorer):
    """1 - min(in-flight uncached prompt tokens, threshold) / threshold (llm-d)."""

    type_name = "token-load-scorer"
    category = Category.DISTRIBUTION
    Params = TokenLoadParams

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        t = self.params.queue_threshold_tokens
        return [1.0 - min(e.inflight.prompt_tokens, t) / t for e in endpoints]


class ActiveRequestParams(Params):
    idle_threshold: int = Field(0, alias="idleThreshold", ge=0)
    max_busy_score: float = Field(1.0, alias="maxBusyScore", ge=0, le=1)


@register
class ActiveRequestScorer(Scorer):
    """Requests the EPP itself has in flight per endpoint: idle -> 1.0, busy -> scaled by the busiest."""

    type_name = "active-request-scorer"
    category = Category.DISTRIBUTION
    Params = ActiveRequestParams

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        counts = [e.inflight.requests for e in endpoints]
        busiest = max(counts)
        idle, top = self.params.idle_threshold, self.params.max_busy_score
        return [1.0 if c <= idle else top * (busiest - c) / busiest for c in counts]


class LoadAwareParams(Params):
    threshold: int = Field(128, gt=0)


@register
class LoadAwareScorer(Scorer):
    """0.5 with an empty queue, else 0.5 * (1 - min(queue, threshold) / threshold) (llm-d)."""

    type_name = "load-aware-scorer"
    category = Category.DISTRIBUTION
    Params = LoadAwareParams

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        t = self.params.threshold
        return [0.5 if (q := e.metrics.waiting_queue_size) == 0 else 0.5 * (1 - min(q, t) / t) for e in endpoints]

"""Filters that narrow the candidate endpoints."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol import saturation
from epp.scheduling.plugin import Filter, Params, PreRequest, register
from epp.scheduling.types import CycleState, SchedulingRequest, SchedulingResult

TEST_SELECTION_HEADER = "test-epp-endpoint-selection"


@register
class HeaderBasedTestingFilter(Filter):
    """Conformance-test filter: keep endpoints named (IP or IP:port) in a request header; none if absent."""

    type_name = "header-based-testing-filter"

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        value = req.headers.get(TEST_SELECTION_HEADER, "")
        wanted = {v.strip() for v in value.split(",") if v.strip()}
        if not wanted:
            return []
        return [e for e in endpoints if e.address in wanted or e.hostport in wanted]


SERVED_ENDPOINT_HEADER = "x-conformance-test-served-endpoint"


@register
class DestinationEndpointServedVerifier(PreRequest):
    """Conformance-test plugin: the response carries `x-conformance-test-served-endpoint` with the
    endpoint the gateway says it served (`envoy.lb` / `x-gateway-destination-endpoint-served` on
    the response messages), so the suite can check the gateway followed the pick."""

    type_name = "destination-endpoint-served-verifier"

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        result.served_endpoint_header = SERVED_ENDPOINT_HEADER


ROLE_LABEL = "llm-d.ai/role"


@register
class DecodeFilter(Filter):
    """Endpoints that decode: role `decode` or `both`, or no role label (a plain server does both)."""

    type_name = "decode-filter"

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.labels.get(ROLE_LABEL, "both") in ("decode", "both")]


@register
class PrefillFilter(Filter):
    """Endpoints labelled for prefill (role `prefill` or `both`)."""

    type_name = "prefill-filter"

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        return [e for e in endpoints if e.labels.get(ROLE_LABEL) in ("prefill", "both")]


class ByLabelParams(Params):
    label: str
    valid_values: list[str] = Field(default_factory=list, alias="validValues")
    allows_no_label: bool = Field(False, alias="allowsNoLabel")


@register
class ByLabelFilter(Filter):
    """Keep endpoints whose `label` has one of `validValues` (or no such label, if allowed)."""

    type_name = "by-label"
    Params = ByLabelParams

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        valid = set(p.valid_values)
        return [e for e in endpoints if (e.labels[p.label] in valid if p.label in e.labels else p.allows_no_label)]


class LabelSelectorParams(Params):
    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")


@register
class LabelSelectorFilter(Filter):
    """Keep endpoints whose labels include every `matchLabels` pair (Kubernetes selector semantics)."""

    type_name = "label-selector-filter"
    Params = LabelSelectorParams

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        want = self.params.match_labels.items()
        return [e for e in endpoints if all(e.labels.get(k) == v for k, v in want)]


class UtilizationDetectorParams(Params):
    queue_depth_threshold: int = Field(5, alias="queueDepthThreshold", gt=0)
    kv_cache_util_threshold: float = Field(0.8, alias="kvCacheUtilThreshold", gt=0, le=1)
    metrics_staleness_threshold: str = Field("200ms", alias="metricsStalenessThreshold")
    headroom: float = Field(0.0, ge=0)
    # Ours: count requests sent since the last scraped page as queued (flowcontrol/saturation.py).
    # On by default under flow control, where the reading gates dispatch.
    count_unseen_picks: bool | None = Field(None, alias="countUnseenPicks")


@register
class UtilizationDetector(Filter):
    """Saturation detector (admission, flow control) that doubles as a filter: drops endpoints
    above their limits (plus headroom) or with stale metrics; keeps everything if that would
    drop all."""

    type_name = "utilization-detector"
    Params = UtilizationDetectorParams

    def __init__(self, name: str, params: UtilizationDetectorParams) -> None:
        super().__init__(name, params)
        from epp.duration import parse_duration

        self.staleness = parse_duration(params.metrics_staleness_threshold)
        if self.staleness <= 0:
            raise ValueError(f"metricsStalenessThreshold must be positive (got {params.metrics_staleness_threshold!r})")

    def detector(self, flow_control: bool) -> saturation.UtilizationDetector:
        p = self.params
        unseen = flow_control if p.count_unseen_picks is None else p.count_unseen_picks
        return saturation.UtilizationDetector(
            p.queue_depth_threshold, p.kv_cache_util_threshold, self.staleness, unseen
        )

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        now = time.monotonic()
        limit = 1.0 + p.headroom
        kv_limit = min(1.0, p.kv_cache_util_threshold * limit) / p.kv_cache_util_threshold
        keep = [
            e
            for e in endpoints
            if not e.metrics.stale(self.staleness, now)
            and e.metrics.waiting_queue_size / p.queue_depth_threshold <= limit
            and e.metrics.kv_cache_usage_percent / p.kv_cache_util_threshold <= kv_limit
        ]
        return keep or endpoints


class ConcurrencyDetectorParams(Params):
    concurrency_mode: Literal["requests", "tokens"] = Field("requests", alias="concurrencyMode")
    max_concurrency: int = Field(100, alias="maxConcurrency", gt=0)
    max_token_concurrency: int = Field(1_000_000, alias="maxTokenConcurrency", gt=0)
    headroom: float = Field(0.0, ge=0)


@register
class ConcurrencyDetector(Filter):
    """Saturation from the EPP's own in-flight counts; as a filter, drops endpoints over their
    cap (plus headroom), fail-open if all are."""

    type_name = "concurrency-detector"
    Params = ConcurrencyDetectorParams

    def detector(self, flow_control: bool) -> saturation.ConcurrencyDetector:
        p = self.params
        return saturation.ConcurrencyDetector(p.concurrency_mode, p.max_concurrency, p.max_token_concurrency)

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        p = self.params
        if p.concurrency_mode == "tokens":
            limit = p.max_token_concurrency * (1 + p.headroom)
            keep = [e for e in endpoints if e.inflight.prompt_tokens < limit]
        else:
            limit = p.max_concurrency * (1 + p.headroom)
            keep = [e for e in endpoints if e.inflight.requests < limit]
        return keep or endpoints

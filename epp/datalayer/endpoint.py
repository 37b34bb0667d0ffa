"""The endpoint model shared by the data layer (which fills it) and scheduling (which reads it).

Cold path (scrapers, sources) writes `Endpoint.metrics`; hot path (scheduling) reads it and
updates `Endpoint.inflight` at the moment of each pick. Nothing here knows gRPC or HTTP.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class EndpointMetrics:
    """What the model server reported on its last scrape (reference `datalayer.Metrics`)."""

    waiting_queue_size: int = 0
    running_requests_size: int = 0
    kv_cache_usage_percent: float = 0.0  # 0..1
    active_models: frozenset[str] = frozenset()  # running LoRA adapters
    waiting_models: frozenset[str] = frozenset()  # waiting LoRA adapters
    max_active_models: int = 0  # max_lora
    served_models: frozenset[str] = frozenset()  # model_name labels of the server's own series
    cache_block_size: int = 0  # tokens per KV block (0 = unknown)
    cache_num_blocks: int = 0  # KV blocks on the server (0 = unknown)
    prefix_cache_queries: float = 0.0  # counters, when the engine exports them
    prefix_cache_hits: float = 0.0
    update_time: float = 0.0  # time.monotonic() of the last successful scrape (0 = never)
    # How much longer than --refresh-metrics-interval this endpoint's scrape interval is (the
    # scrape budget stretches it in big pools): staleness thresholds tuned for the configured
    # interval allow this much more, or every endpoint of a big pool would look stale.
    interval_stretch: float = 0.0
    # `InflightLoad.picks` when this page was read: picks after it are in no scraped queue yet,
    # so a saturation reading adds them (flowcontrol/saturation.py) instead of dispatching a
    # whole backlog on one stale page.
    picks_seen: int = 0

    def age(self, now: float | None = None) -> float:
        if self.update_time == 0.0:
            return float("inf")
        return (time.monotonic() if now is None else now) - self.update_time

    def stale(self, threshold: float, now: float) -> bool:
        """Never scraped, or older than `threshold` plus the interval stretch."""
        return self.update_time == 0.0 or now - self.update_time > threshold + self.interval_stretch


@dataclass(slots=True)
class InflightLoad:
    """What the EPP has sent to an endpoint and not yet seen finish.

    Updated on the hot path at pick time and released at response end or stream abort,
    so a burst inside one scrape interval still sees the load it is creating.
    `prefill_tokens` is released earlier, at the first response byte: from then on the
    request no longer holds up other requests' prefill, only their decode steps.
    """

    requests: int = 0
    prompt_tokens: int = 0  # uncached prompt tokens (estimate) of unfinished requests
    prefill_tokens: int = 0  # uncached prompt tokens of requests whose first byte has not come back
    prefill_requests: int = 0  # how many requests those are
    long_prefills: int = 0  # of those, how many are long prompts (flowcontrol/prefill_gate.py)
    # Uncached prompt tokens of requests the prefill gate holds in the EPP for this endpoint: a
    # queue too, only on our side of the wire; the scorer must see it or a held-back endpoint
    # looks idle and keeps attracting traffic it cannot take.
    held_tokens: int = 0
    picks: int = 0  # every pick ever made here (monotonic): see EndpointMetrics.picks_seen

    def add(self, tokens: int, long: bool = False) -> None:
        self.picks += 1
        self.requests += 1
        self.prompt_tokens += tokens
        self.prefill_tokens += tokens
        self.prefill_requests += 1
        if long:
            self.long_prefills += 1

    def prefill_done(self, tokens: int, long: bool = False) -> None:
        self.prefill_tokens = max(0, self.prefill_tokens - tokens)
        self.prefill_requests = max(0, self.prefill_requests - 1)
        if long:
            self.long_prefills = max(0, self.long_prefills - 1)

    def release(self, tokens: int, prefill_pending: bool = False, long: bool = False) -> None:
        self.requests = max(0, self.requests - 1)
        self.prompt_tokens = max(0, self.prompt_tokens - tokens)
        if prefill_pending:
            self.prefill_done(tokens, long)


@dataclass(slots=True)
class Reachability:
    """Whether the server answers at all, from both sides of the EPP.

    Written by the scraper (cold path: transport failures of /metrics) and by the response
    path (hot path: requests that failed to reach the server). Read by the candidate filter
    (datalayer/health.py), which keeps dead servers out of every scheduling profile: without
    it a dead server looks idle (its in-flight requests fail at once and release their load,
    its last metrics stay as they were) and attracts most picks.
    """

    scrape_failures: int = 0  # consecutive scrapes that got no HTTP answer (refused, reset, timeout)
    last_scrape_failed: bool = False  # the last scrape gave no usable page, for whatever reason
    request_failures: int = 0  # consecutive requests that failed to reach the server
    ejected_until: float = 0.0  # monotonic time before which request failures keep it out
    ejections: int = 0  # consecutive ejections, for the back-off


@dataclass(slots=True, eq=False)
class Endpoint:
    """One model-server endpoint: a pod (or static host) and one target port."""

    name: str  # e.g. "<pod>-rank-<i>" or "host:port" for static endpoints
    address: str  # IP or host
    port: int
    metrics_port: int = 0  # 0 = same as port
    engine: str = "vllm"  # vllm | sglang | trtllm-serve | triton-tensorrt-llm
    labels: dict[str, str] = field(default_factory=dict)
    pod_name: str = ""
    namespace: str = ""
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    inflight: InflightLoad = field(default_factory=InflightLoad)
    reach: Reachability = field(default_factory=Reachability)

    @property
    def hostport(self) -> str:
        """`ip:port` as gateways expect it (IPv6 bracketed, like Go's net.JoinHostPort)."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def metrics_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.metrics_port or self.port}/metrics"

    def __hash__(self) -> int:
        return id(self)

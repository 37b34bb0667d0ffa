"""The picker's own Prometheus metrics: requests by status, errors by cause, pick latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from epp.bridge.contract import PickOutcome

# Picks take ~0.3-3 ms on a healthy EPP; the tail up to the deadline matters for NGINX timeouts.
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, mode: str = "bridge") -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "epp_bridge_requests", "Pick requests answered, by HTTP status.", ("mode", "code"), registry=r
        )
        self.errors = Counter(
            "epp_bridge_errors", "Pick requests without an endpoint, by cause.", ("mode", "cause"), registry=r
        )
        self.latency = Histogram(
            "epp_bridge_pick_duration_seconds",
            "Time to answer a pick request.",
            ("mode",),
            buckets=_BUCKETS,
            registry=r,
        )
        self.channels = Gauge("epp_bridge_grpc_channels", "Pooled gRPC channels to EPPs.", ("mode",), registry=r)
        self.mode = mode
        # Pre-create the common series so dashboards see zeros, not gaps.
        self.requests.labels(mode, "200")
        self.latency.labels(mode)

    def observe(self, outcome: PickOutcome, seconds: float) -> None:
        self.requests.labels(self.mode, str(outcome.status)).inc()
        if outcome.cause is not None:
            self.errors.labels(self.mode, outcome.cause.value).inc()
        self.latency.labels(self.mode).observe(seconds)

"""Flow-control metrics under the reference's names (flowcontrol.md §4), GIE and llm-d prefixes.

Both prefixes are emitted (`inference_extension_…` as GIE, `llm_d_epp_…` as llm-d-router), so
either project's dashboards and autoscalers read them unchanged. Labels are bounded: model
names come from ModelLabels, fairness ids are capped at `MAX_FAIRNESS_IDS` distinct values
(then `other`), priorities are what the InferenceObjectives define.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_FAIRNESS_IDS = 100
OTHER = "other"
PREFIXES = ("inference_extension_", "llm_d_epp_")
_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
_CYCLE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
_QUEUE_LABELS = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")


class _Both:
    """One logical metric written under both prefixes."""

    __slots__ = ("metrics",)

    def __init__(self, cls, name: str, doc: str, labels: tuple[str, ...], registry: CollectorRegistry, **kw) -> None:
        self.metrics = tuple(cls(p + name, doc, labels, registry=registry, **kw) for p in PREFIXES)

    def labels(self, *values: str) -> _Children:
        if not values:  # a metric without labels is its own child
            return _Children(self.metrics)
        return _Children(tuple(m.labels(*values) for m in self.metrics))


class _Children:
    __slots__ = ("children",)

    def __init__(self, children: tuple) -> None:
        self.children = children

    def inc(self, amount: float = 1) -> None:
        for c in self.children:
            c.inc(amount)

    def dec(self, amount: float = 1) -> None:
        for c in self.children:
            c.dec(amount)

    def set(self, value: float) -> None:
        for c in self.children:
            c.set(value)

    def observe(self, value: float) -> None:
        for c in self.children:
            c.observe(value)


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry, pool: str) -> None:
        r = registry
        self.pool = pool
        self.queue_size = _Both(Gauge, "flow_control_queue_size", "Requests waiting in flow control.", _QUEUE_LABELS, r)
        self.queue_bytes = _Both(
            Gauge, "flow_control_queue_bytes", "Request bytes waiting in flow control.", _QUEUE_LABELS, r
        )
        self.queue_duration = _Both(
            Histogram,
            "flow_control_request_queue_duration_seconds",
            "Time from entering flow control to its outcome.",
            ("fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name"),
            r,
            buckets=_QUEUE_BUCKETS,
        )
        self.cycle = _Both(
            Histogram,
            "flow_control_dispatch_cycle_duration_seconds",
            "One dispatch pass over the bands (all the requests it dispatched).",
            (),
            r,
            buckets=_CYCLE_BUCKETS,
        )
        self.saturation = _Both(
            Gauge, "flow_control_pool_saturation", "Pool saturation flow control last read.", ("inference_pool",), r
        )
        self.requests = _Both(
            Counter,
            "flow_control_requests",
            "Requests by flow-control outcome.",
            ("outcome", "priority", "inference_pool"),
            r,
        )
        self.waiting = Gauge(
            "epp_flow_control_waiting_requests",
            "Requests waiting in the EPP, by why: queued (pool saturated) or prefill-gate.",
            ("reason",),
            registry=r,
        )
        self.dispatches = Counter(
            "epp_flow_control_dispatches", "Requests flow control dispatched from a queue.", registry=r
        )
        self._fairness: set[str] = set()
        self._children: dict[tuple[str, ...], tuple[_Children, _Children]] = {}
        self._outcomes: dict[tuple[str, ...], tuple[_Children, _Children]] = {}
        self._saturation = self.saturation.labels(pool)
        self.queued_gauge = self.waiting.labels("queued")
        self.gate_gauge = self.waiting.labels("prefill-gate")

    def fairness_label(self, flow_id: str) -> str:
        if flow_id in self._fairness:
            return flow_id
        if len(self._fairness) >= MAX_FAIRNESS_IDS:
            return OTHER
        self._fairness.add(flow_id)
        return flow_id

    def queue(self, labels: tuple[str, ...]) -> tuple[_Children, _Children]:
        """(queue_size, queue_bytes) children for (fairness, priority, model, target)."""
        c = self._children.get(labels)
        if c is None:
            fid, prio, model, target = labels
            values = (fid, prio, self.pool, model, target)
            c = self._children[labels] = (self.queue_size.labels(*values), self.queue_bytes.labels(*values))
        return c

    def outcome(self, labels: tuple[str, ...], outcome: str, seconds: float) -> None:
        key = (*labels, outcome)
        c = self._outcomes.get(key)
        if c is None:
            fid, prio, model, target = labels
            c = self._outcomes[key] = (
                self.queue_duration.labels(fid, prio, outcome, self.pool, model, target),
                self.requests.labels(outcome, prio, self.pool),
            )
        c[0].observe(seconds)
        c[1].inc()

    def set_saturation(self, value: float) -> None:
        self._saturation.set(value)

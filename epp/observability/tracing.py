"""OpenTelemetry tracing (`--tracing`): one trace per request, configured by the standard `OTEL_*`
environment variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_* ...), exported over OTLP/gRPC by a batch processor thread.

Spans, under the request's `gateway.request` (a child of the gateway's own span when the request
carries a W3C `traceparent`):
* `epp.parse`: reading the body (model, prompt) — with the API and the model names;
* `epp.flow_control.wait`: time in the waiting room, when the request waited;
* `epp.schedule`: the pick — endpoint chosen and the top endpoints' scores;
* `epp.response`: from the pick to the end of the response — status and token usage.
Phases are recorded with their own start and end times after the fact, so the request path only
takes timestamps; with `--tracing` off no tracer exists and the director skips all of it (one
`is None` test per phase). The model server gets a `traceparent` naming `gateway.request` as its
parent, so its own spans (vLLM `--otlp-traces-endpoint`) join the same trace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("epp")

TRACER_NAME = "epp"
_tracer: Any = None
_provider: Any = None


def setup(enabled: bool, exporter: Any = None) -> bool:
    """Install the SDK's tracer provider when `enabled`; False (and tracing stays off) when the
    OpenTelemetry packages are missing. `exporter`: a SpanExporter instead of OTLP (benchmarks)."""
    global _tracer, _provider
    if not enabled:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:  # an install without the tracing packages
        log.warning("--tracing: OpenTelemetry SDK not importable (%s); tracing is off", exc)
        return False
    # The SDK reads OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER(_ARG) and OTEL_RESOURCE_ATTRIBUTES itself.
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "epp")})
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(exporter if exporter is not None else OTLPSpanExporter()))
    _tracer = _provider.get_tracer(TRACER_NAME)
    log.info(
        "tracing on: OTLP to %s",
        os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317")
        ),
    )
    return True


def shutdown() -> None:
    """Flush what is queued (at most a few seconds) and stop the exporter thread."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def request_trace() -> RequestTrace | None:
    """A trace for one request, or None when tracing is off (the common, free case)."""
    return RequestTrace(_tracer) if _tracer is not None else None


class RequestTrace:
    """The spans of one request, recorded as its phases end."""

    __slots__ = ("_ctx", "_root", "_tracer", "begun", "parsed", "recording", "t_begin", "t_routed", "t_wait")

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer
        self._root: Any = None
        self._ctx: Any = None
        self.begun = self.parsed = False
        # False once the sampler has dropped this request: only its traceparent is still made
        # (so the model server follows the decision), no child span and no attribute.
        self.recording = False
        self.t_begin = self.t_wait = self.t_routed = 0  # ns; t_wait 0 = has not waited

    def begin(self, headers: Mapping[str, str], start_ns: int) -> None:
        self.begun, self.t_begin = True, start_ns
        from opentelemetry import trace

        parent = _propagator().extract(headers)
        self._root = self._tracer.start_span(
            "gateway.request", context=parent, kind=trace.SpanKind.SERVER, start_time=start_ns
        )
        self.recording = self._root.is_recording()
        self._ctx = trace.set_span_in_context(self._root)

    def phase(self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None) -> None:
        if not self.recording:
            return
        span = self._tracer.start_span(name, context=self._ctx, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)

    def traceparent(self) -> str | None:
        """The W3C header for the upstream request: the model server's spans become children."""
        if self._root is None:
            return None
        carrier: dict[str, str] = {}
        _propagator().inject(carrier, context=self._ctx)
        return carrier.get("traceparent")

    def end(self, attributes: Mapping[str, Any], error: str | None = None) -> None:
        if self._root is None:
            return
        if self.recording:
            from opentelemetry.trace import Status, StatusCode

            self._root.set_attributes(dict(attributes))
            if error:
                self._root.set_status(Status(StatusCode.ERROR, error))
        self._root.end()
        self._root = None
        self.recording = False


_PROPAGATOR: Any = None


def _propagator() -> Any:
    """W3C trace context (one instance: it keeps no state per request)."""
    global _PROPAGATOR
    if _PROPAGATOR is None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _PROPAGATOR = TraceContextTextMapPropagator()
    return _PROPAGATOR


def top_scores(endpoints: Sequence[Any], totals: Sequence[float], k: int = 3) -> str:
    """ "name=score, ..." for the `k` best endpoints (an attribute, so a string)."""
    order = sorted(range(len(totals)), key=totals.__getitem__, reverse=True)[:k]
    return ", ".join(f"{endpoints[i].hostport}={totals[i]:.3f}" for i in order)


def now_ns() -> int:
    return time.time_ns()

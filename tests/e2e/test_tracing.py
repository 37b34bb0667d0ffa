"""`--tracing`: one request through real Envoy and the EPP is exported to a real OTLP receiver
with its spans and attributes, and the model server is handed a traceparent inside that trace."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import MODEL
from tests.support.otlp import OtlpReceiver, attributes

TRACE = "0af7651916cd43dd8448eb211c80319c"
GATEWAY_SPAN = "b7ad6b7169203331"


def traced_gateway(rx, monkeypatch, sim_fleet, epp_server, envoy, replicas: int, **env: str):
    """Fleet, `epp --tracing` exporting to `rx` (flushed every 100 ms), Envoy in front."""
    settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    for k, v in {**settings, "OTEL_BSP_SCHEDULE_DELAY": "100", **env}.items():
        monkeypatch.setenv(k, v)
    fleet = sim_fleet(replicas)
    epp = epp_server(fleet.hostports, "--tracing")
    return epp, envoy("original-dst", epp)


def test_a_request_is_traced_with_its_phases_and_the_model_server_joins(sim_fleet, epp_server, envoy, monkeypatch):
    with OtlpReceiver() as rx:
        epp, gw = traced_gateway(rx, monkeypatch, sim_fleet, epp_server, envoy, 2, OTEL_SERVICE_NAME="epp-under-test")
        body = {
            "model": MODEL,
            "prompt": "Trace me, please. " * 20,
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        r = httpx.post(
            f"{gw.url}/v1/completions", json=body, timeout=30, headers={"traceparent": f"00-{TRACE}-{GATEWAY_SPAN}-01"}
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        mine: dict[str, object] = {}
        while time.monotonic() < deadline:
            mine = {s.name: s for s in rx.spans() if s.trace_id.hex() == TRACE}
            if "gateway.request" in mine:
                break
            time.sleep(0.1)
        assert {"gateway.request", "epp.parse", "epp.schedule", "epp.response"} <= set(mine), sorted(mine)
        root = mine["gateway.request"]
        assert root.parent_span_id.hex() == GATEWAY_SPAN  # a child of the gateway's span
        for name in ("epp.parse", "epp.schedule", "epp.response"):
            assert mine[name].parent_span_id == root.span_id, name
            assert root.start_time_unix_nano <= mine[name].start_time_unix_nano <= mine[name].end_time_unix_nano
        served = f"127.0.0.1:{r.headers['x-inference-port']}"
        sched = attributes(mine["epp.schedule"])
        assert sched["epp.endpoint"] == served
        assert served in sched["epp.scores.top"] and "=" in sched["epp.scores.top"]
        parse = attributes(mine["epp.parse"])
        assert parse["epp.api"] == "completions" and parse["gen_ai.request.model"] == MODEL
        resp = attributes(mine["epp.response"])
        assert resp["http.response.status_code"] == 200 and resp["gen_ai.usage.output_tokens"] == 5
        assert resp["gen_ai.usage.input_tokens"] > 20
        assert any(
            a.key == "service.name" and a.value.string_value == "epp-under-test"
            for res in rx.collector.resources
            for a in res.attributes
        )
        # The model server saw a traceparent in this trace whose parent is the EPP's request span.
        seen = r.headers["x-sim-traceparent"].split("-")
        assert seen[1] == TRACE and seen[2] == root.span_id.hex()
        assert epp.proc.alive


def test_a_request_the_sampler_drops_exports_nothing_and_passes_the_decision_on(
    sim_fleet, epp_server, envoy, monkeypatch
):
    with OtlpReceiver() as rx:
        _, gw = traced_gateway(
            rx,
            monkeypatch,
            sim_fleet,
            epp_server,
            envoy,
            1,
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="1.0",
        )
        body = {"model": MODEL, "prompt": "Do not trace me.", "max_tokens": 3}
        # The gateway's parent says "not sampled" (flags 00): the EPP follows it.
        r = httpx.post(
            f"{gw.url}/v1/completions", json=body, timeout=30, headers={"traceparent": f"00-{TRACE}-{GATEWAY_SPAN}-00"}
        )
        assert r.status_code == 200
        seen = r.headers["x-sim-traceparent"].split("-")
        assert seen[1] == TRACE and seen[3] == "00"  # same trace, still not sampled, for the model server
        # A sampled request after it is exported, so the receiver was listening all along.
        r = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=30)
        assert r.status_code == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not rx.spans():
            time.sleep(0.1)
        assert rx.spans() and not [s for s in rx.spans() if s.trace_id.hex() == TRACE]

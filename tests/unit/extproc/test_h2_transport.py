"""What the h2corn transport adds to the protocol tests (which run on it by default): gRPC
errors a real grpc client understands, the grpcio transport still selectable, and the pinned
h2corn still having what the EPP patches."""

from __future__ import annotations

import asyncio
import gc

import grpc
import h2corn._lib
import pytest

from epp.datalayer.endpoint import Endpoint
from epp.extproc import h2server
from tests.support import extproc_client as xc
from tests.support.inproc import running_epp


def eps() -> list[Endpoint]:
    return [Endpoint("a", "127.0.0.1", 9), Endpoint("b", "127.0.0.2", 9)]


def test_the_banner_patch_still_has_its_target():
    assert h2corn._lib.emit_banner.__name__ == "<lambda>"  # patched on import of epp.extproc.h2server
    assert h2server.MAX_CONCURRENT_STREAMS >= 16


async def test_unknown_method_is_unimplemented_and_the_port_keeps_serving():
    async with running_epp(eps()) as (_epp, ch):
        call = ch.unary_unary(
            "/no.such.Service/Method", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(b"", timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "/no.such.Service/Method" in exc.value.details()
        out = await xc.run_stream(ch, [xc.request_headers(eos=True, method="GET", path="/v1/models")])
        assert (
            out[0].request_headers.response.header_mutation.set_headers[0].header.key
            == "x-gateway-destination-endpoint"
        )


async def test_oversize_grpc_message_is_resource_exhausted():
    async with running_epp(eps(), max_request_body_bytes=1000) as (_epp, ch):
        process = ch.stream_stream(
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        call = process(timeout=5)
        await call.write(b"\x00" * ((1 << 20) + 2000))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in call:
                pass
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_grpcio_transport_is_still_selectable():
    async with running_epp(eps(), extproc_transport="grpcio") as (epp, ch):
        assert type(epp.processor).__name__ == "ExternalProcessor"
        out = await xc.run_stream(ch, [xc.request_headers(eos=True, method="GET", path="/v1/models")])
        assert out[0].WhichOneof("response") == "request_headers"


async def test_an_open_health_watch_does_not_hold_the_shutdown():
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from epp.options import Options
    from epp.runner import Epp
    from epp.scheduling.config import load_config
    from epp.stack.processes import free_port

    o = Options(
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        secure_serving=False,
        static_endpoints="x",
        refresh_metrics_interval=3600,
    )
    epp = Epp(o, load_config(None), eps())
    await epp.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{o.grpc_health_port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="readiness"))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        # h2corn's graceful drain would wait for the watch (60 s by default): stop() ends it.
        await asyncio.wait_for(epp.stop(grace=0.5), 10)


FLOW = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: estimated-ttft-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: estimated-ttft-scorer
  - pluginRef: max-score-picker
flowControl:
  defaultRequestTTL: {ttl}
"""


async def _unhandled_while(run) -> list[str]:
    """What asyncio reports as unhandled (a task's exception nobody read) while `run()` runs."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        await run()
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    return [f"{c.get('message')}: {c.get('future') or c.get('exception')}" for c in unhandled]


async def _waiting_request(ch, deadline: float) -> xc.Conversation:
    conv = xc.Conversation(ch, timeout=deadline)
    await conv.send(xc.request_headers())
    await conv.send(xc.request_body(b'{"model":"m","prompt":"hi"}'))
    return conv


async def test_a_call_answered_at_the_end_of_its_wait_leaves_nothing_behind():
    # The request waits (no endpoint yet) and is answered 503 when its TTL ends, closing the
    # call while a receive() started during the wait is still out.
    async def run() -> None:
        async with running_epp([], FLOW.format(ttl="300ms")) as (_epp, ch):
            for _ in range(3):
                conv = await _waiting_request(ch, 10)
                assert (await conv.recv()).immediate_response.status.code == 503
                conv.call.cancel()  # the client goes, as Envoy's does after an immediate response
            await asyncio.sleep(0.5)

    assert await _unhandled_while(run) == []


async def test_a_call_whose_deadline_ends_its_wait_leaves_nothing_behind():
    # Found by the 20,000-stream fuzz ("Task exception was never retrieved" in the EPP's log):
    # the call's grpc-timeout cancels a request that waits in the EPP; the wait's own tasks
    # (the hold, the receive watching the client) must go with it, not fail later unread.
    async def run() -> None:
        async with running_epp([], FLOW.format(ttl="60s")) as (epp, ch):
            for _ in range(3):
                conv = await _waiting_request(ch, 0.3)
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await conv.recv()
                assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.3)
            assert epp.flow.registry.count == 0  # the deadline took them out of the queue too

    assert await _unhandled_while(run) == []

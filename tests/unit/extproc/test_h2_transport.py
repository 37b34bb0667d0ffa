"""What the h2corn transport adds to the protocol tests (which run on it by default): gRPC
errors a real grpc client understands, the grpcio transport still selectable, and the pinned
h2corn still having what the EPP patches."""

from __future__ import annotations

import asyncio

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

"""A real pick through ChannelPool's TLS relay to an in-process ext_proc server with an unnamed self-signed cert."""

from __future__ import annotations

from typing import ClassVar

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.bridge.channels import ChannelPool, TlsMode
from epp.bridge.contract import Cause
from epp.bridge.extproc_client import pick
from epp.errors import bad_request
from epp.extproc import tls
from epp.extproc.servicer import ExternalProcessor
from epp.requestcontrol.exchange import IncomingRequest, RouteDecision


class FixedExchange:
    """Routes every request to one endpoint; remembers what it was given and whether it was finished."""

    seen: ClassVar[list[IncomingRequest]] = []
    finished: ClassVar[list[bool]] = []

    def route(self, req: IncomingRequest) -> RouteDecision:
        FixedExchange.seen.append(req)
        if req.body == b"bad":
            raise bad_request("bad body")
        return RouteDecision("10.0.0.7:8000,10.0.0.8:8000", None)

    def route_headers_only(self, req: IncomingRequest) -> RouteDecision:
        FixedExchange.seen.append(req)
        return RouteDecision("10.0.0.9:8000", None)

    def finish(self, completed: bool) -> None:
        FixedExchange.finished.append(completed)


async def test_pick_through_tls_without_verification_reuses_one_channel():
    key, cert = tls.self_signed()  # no CN, no SAN: grpc-python alone could not verify it
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(FixedExchange), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    pool = ChannelPool(TlsMode.INSECURE)
    try:
        body = b"x" * 200_000
        for _ in range(3):
            out = await pick(await pool.get("127.0.0.1", port), {":path": "/v1/completions"}, body, 5)
            assert (out.status, out.endpoint, out.fallbacks) == (200, "10.0.0.7:8000", ["10.0.0.8:8000"])
        assert len(pool) == 1
        assert FixedExchange.seen[-1].body == body  # four 62,000-byte messages reassembled
        assert FixedExchange.seen[-1].headers[":path"] == "/v1/completions"

        out = await pick(await pool.get("127.0.0.1", port), {}, b"", 5)
        assert out.endpoint == "10.0.0.9:8000"
        out = await pick(await pool.get("127.0.0.1", port), {}, b"bad", 5)
        assert (out.status, out.cause, out.body) == (400, Cause.IMMEDIATE, b"inference error: BadRequest - bad body")
        # Every stream ended without a response phase, and each one released its exchange.
        assert FixedExchange.finished == [False] * 5

        plain = ChannelPool(TlsMode.PLAINTEXT)
        out = await pick(await plain.get("127.0.0.1", port), {}, b"{}", 5)
        assert out.cause is Cause.UNREACHABLE
        await plain.close()
    finally:
        await pool.close()
        await server.stop(None)


async def test_ngf_shim_wire_format_is_understood():
    """What NGF's Go shim sends (gateways.md §2.4): values in `value`, no pseudo-headers, one big body message."""
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from epp.bridge.extproc_client import destination_of

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 << 20)])
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(FixedExchange), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    body = b'{"model":"m","messages":[]' + b" " * (1 << 20) + b"}"
    msgs = [
        pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(
                headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key="content-type", value="application/json")])
            )
        ),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
    ]
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 << 20)]
        ) as ch:
            replies = [r async for r in pb_grpc.ExternalProcessorStub(ch).Process(iter(msgs), timeout=5)]
        assert destination_of(replies[0]) == "10.0.0.7:8000,10.0.0.8:8000"
        seen = FixedExchange.seen[-1]
        assert seen.headers == {"content-type": "application/json"} and seen.body == body
    finally:
        await server.stop(None)

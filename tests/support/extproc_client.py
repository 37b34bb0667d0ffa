"""A minimal ext_proc client for protocol tests: builds Envoy-shaped messages, runs one stream."""

from __future__ import annotations

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED


def header_map(headers: dict[str, str], raw: bool = True) -> base_pb2.HeaderMap:
    if raw:
        return base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
        )
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, value=v) for k, v in headers.items()])


def request_headers(
    path: str = "/v1/completions",
    eos: bool = False,
    extra: dict[str, str] | None = None,
    mode: int | None = FULL_DUPLEX,
    subset: list[str] | str | None = None,
    raw: bool = True,
    method: str = "POST",
) -> pb.ProcessingRequest:
    h = {":method": method, ":path": path, ":authority": "gw", ":scheme": "http", "content-type": "application/json"}
    h.update(extra or {})
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(h, raw), end_of_stream=eos))
    if mode is not None:
        req.protocol_config.request_body_mode = mode
        req.protocol_config.response_body_mode = mode
    if subset is not None:
        s = struct_pb2.Struct()
        if isinstance(subset, str):
            s.fields["x-gateway-destination-endpoint-subset"].string_value = subset
        else:
            s.fields["x-gateway-destination-endpoint-subset"].list_value.extend(subset)
        req.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(s)
    return req


def request_body(body: bytes, eos: bool = True) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=eos))


def request_trailers() -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_trailers=pb.HttpTrailers())


def response_headers(headers: dict[str, str], eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=eos))


def response_body(body: bytes, eos: bool) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos))


def response_trailers() -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_trailers=pb.HttpTrailers())


def body_chunks(body: bytes, size: int) -> list[pb.ProcessingRequest]:
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [request_body(c, eos=(i == len(chunks) - 1)) for i, c in enumerate(chunks)]


async def run_stream(
    channel: grpc.aio.Channel, messages: list[pb.ProcessingRequest], timeout: float = 10.0
) -> list[pb.ProcessingResponse]:
    """Send every message, half-close, collect every response until the server ends the stream."""
    stub = pb_grpc.ExternalProcessorStub(channel)
    call = stub.Process(timeout=timeout)
    for m in messages:
        await call.write(m)
    await call.done_writing()
    out = []
    async for resp in call:
        out.append(resp)
    return out


class Conversation:
    """Interleaved send/receive for tests that need to see what is answered when."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 10.0) -> None:
        self.call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=timeout)

    async def send(self, m: pb.ProcessingRequest) -> None:
        await self.call.write(m)

    async def recv(self) -> pb.ProcessingResponse:
        return await self.call.read()

    async def close(self) -> list[pb.ProcessingResponse]:
        import grpc.aio

        await self.call.done_writing()
        out = []
        while True:
            r = await self.call.read()
            if r is grpc.aio.EOF:
                return out
            out.append(r)


def set_headers(resp_common) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in resp_common.header_mutation.set_headers}


def streamed_body(responses: list[pb.ProcessingResponse], field: str = "request_body") -> tuple[bytes, list[bool]]:
    parts, eos = [], []
    for r in responses:
        if r.WhichOneof("response") == field:
            sr = getattr(r, field).response.body_mutation.streamed_response
            parts.append(sr.body)
            eos.append(sr.end_of_stream)
    return b"".join(parts), eos

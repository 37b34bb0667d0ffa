"""One pick over ext_proc, the way a gateway without a response phase drives an EPP.

Sends `request_headers` (values as `raw_value`), the body in <= 62,000-byte `request_body`
messages (the last with end_of_stream), half-closes, and reads to the end of the stream: the
EPP releases the request's per-stream state when the stream ends, which is the only
end-of-request signal an NGINX path can give it.
"""

from __future__ import annotations

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.bridge.contract import Cause, PickOutcome

BODY_CHUNK = 62_000
_DESTINATION = "x-gateway-destination-endpoint"
_LB = "envoy.lb"
_FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
_NONE = processing_mode_pb2.ProcessingMode.NONE


def build_messages(headers: dict[str, str], body: bytes) -> list[pb.ProcessingRequest]:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    )
    first = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map, end_of_stream=not body))
    # What Envoy announces in FULL_DUPLEX_STREAMED, and that no response phase will follow.
    first.protocol_config.request_body_mode = _FULL_DUPLEX
    first.protocol_config.response_body_mode = _NONE
    out = [first]
    if body:
        last = (len(body) - 1) // BODY_CHUNK
        for i in range(last + 1):
            chunk = body[i * BODY_CHUNK : (i + 1) * BODY_CHUNK]
            out.append(pb.ProcessingRequest(request_body=pb.HttpBody(body=chunk, end_of_stream=i == last)))
    return out


def destination_of(resp: pb.ProcessingResponse) -> str:
    """The destination from a header mutation (raw_value, else value) or the envoy.lb metadata."""
    kind = resp.WhichOneof("response")
    if kind in ("request_headers", "request_body"):
        common = getattr(resp, kind).response
        for opt in common.header_mutation.set_headers:
            h = opt.header
            if h.key.lower() == _DESTINATION:
                return h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    fields = resp.dynamic_metadata.fields
    if _LB in fields:
        lb = fields[_LB].struct_value.fields
        if _DESTINATION in lb:
            return lb[_DESTINATION].string_value
    return ""


def _immediate(resp: pb.ProcessingResponse) -> PickOutcome:
    ir = resp.immediate_response
    content_type = ""
    for opt in ir.headers.set_headers:
        if opt.header.key.lower() == "content-type":
            content_type = opt.header.raw_value.decode() if opt.header.raw_value else opt.header.value
    return PickOutcome.immediate(ir.status.code, ir.body, content_type)


async def pick(
    channel: grpc.aio.Channel, headers: dict[str, str], body: bytes, timeout: float, epp: str = "EPP"
) -> PickOutcome:
    """`epp` names the EPP in error bodies (the channel target may be the TLS relay's socket)."""
    stub = pb_grpc.ExternalProcessorStub(channel)
    destination = ""
    try:
        call = stub.Process(iter(build_messages(headers, body)), timeout=timeout)
        async for resp in call:
            if resp.HasField("immediate_response"):
                call.cancel()
                return _immediate(resp)
            if not destination:
                destination = destination_of(resp)
    except grpc.aio.AioRpcError as err:
        code = err.code()
        if destination:
            # The pick arrived; only the stream's end did not (an EPP that waits for more).
            return PickOutcome.picked(destination)
        if code == grpc.StatusCode.UNAVAILABLE:
            return PickOutcome.failed(Cause.UNREACHABLE, f"{epp} unreachable")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PickOutcome.failed(Cause.TIMEOUT, f"{epp} did not answer within {timeout:g}s")
        return PickOutcome.failed(Cause.RPC_ERROR, f"{epp} ext_proc error {code.name}: {err.details()}")
    if not destination:
        return PickOutcome.failed(Cause.NO_ENDPOINT, "the EPP answered without a destination endpoint")
    return PickOutcome.picked(destination)

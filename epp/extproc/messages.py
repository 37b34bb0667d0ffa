"""Builders for ext_proc ProcessingResponse messages (the only place that assembles them)."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

# Envoy recommends response chunks no larger than 64 KiB; the reference uses 62,000 bytes.
BODY_CHUNK_LIMIT = 62_000
DESTINATION = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"

ProcessingResponse = pb.ProcessingResponse
_HeaderValueOption = base_pb2.HeaderValueOption
_HeaderValue = base_pb2.HeaderValue


def header_mutation(set_headers: list[tuple[str, str]], remove: list[str]) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[_HeaderValueOption(header=_HeaderValue(key=k, raw_value=v.encode())) for k, v in set_headers],
        remove_headers=remove,
    )


def route_headers_response(
    destination: str, content_length: int | None, extra: list[tuple[str, str]], remove: list[str]
) -> pb.ProcessingResponse:
    headers = [(DESTINATION, destination)]
    if content_length is not None:
        headers.append(("content-length", str(content_length)))
    headers.extend(extra)
    resp = pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=header_mutation(headers, remove), clear_route_cache=True)
        )
    )
    resp.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION].string_value = destination
    return resp


def empty_request_headers_response() -> pb.ProcessingResponse:
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse())


def buffered_route_body_response(
    destination: str, body: bytes | None, extra: list[tuple[str, str]], remove: list[str]
) -> pb.ProcessingResponse:
    """BUFFERED body mode: the destination travels on the body response (header mutations apply there)."""
    headers = [(DESTINATION, destination)]
    if body is not None:
        headers.append(("content-length", str(len(body))))
    headers.extend(extra)
    common = pb.CommonResponse(header_mutation=header_mutation(headers, remove), clear_route_cache=True)
    if body is not None:
        common.body_mutation.body = body
    resp = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    resp.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION].string_value = destination
    return resp


def streamed_body_responses(body: bytes, end_of_stream: bool, response: bool) -> list[pb.ProcessingResponse]:
    """Body split into <= 62,000-byte streamed_response chunks; EoS only on the last one."""
    field = "response_body" if response else "request_body"
    if len(body) <= BODY_CHUNK_LIMIT:
        chunks = [body]
    else:
        chunks = [body[i : i + BODY_CHUNK_LIMIT] for i in range(0, len(body), BODY_CHUNK_LIMIT)]
    out = []
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        common = pb.CommonResponse(
            body_mutation=pb.BodyMutation(
                streamed_response=pb.StreamedBodyResponse(body=chunk, end_of_stream=end_of_stream and i == last)
            )
        )
        out.append(pb.ProcessingResponse(**{field: pb.BodyResponse(response=common)}))
    return out


def plain_body_response(response: bool, body: bytes | None = None) -> pb.ProcessingResponse:
    """STREAMED/BUFFERED modes: acknowledge a body message (optionally replacing the body)."""
    common = pb.CommonResponse()
    if body is not None:
        common.body_mutation.body = body
    field = "response_body" if response else "request_body"
    return pb.ProcessingResponse(**{field: pb.BodyResponse(response=common)})


def response_headers_response(set_headers: list[tuple[str, str]], remove: list[str]) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(
            response=pb.CommonResponse(header_mutation=header_mutation(set_headers, remove))
        )
    )


def trailers_response(response: bool) -> pb.ProcessingResponse:
    if response:
        return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())


def immediate_response(status: int, body: bytes) -> pb.ProcessingResponse:
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(status=http_status_pb2.HttpStatus(code=status), body=body)
    )


SERVED_KEY = "x-gateway-destination-endpoint-served"


def served_endpoint(metadata_context: Any) -> str | None:  # a protobuf Metadata message
    """`envoy.lb` / `x-gateway-destination-endpoint-served` on a response message: where the
    gateway actually sent the request (Envoy's override_host `selected_host_key`, Istio 1.30+)."""
    fm = metadata_context.filter_metadata
    if LB_NAMESPACE not in fm:
        return None
    v = fm[LB_NAMESPACE].fields.get(SERVED_KEY)
    if v is None or v.WhichOneof("kind") != "string_value":
        return None
    value: str = v.string_value
    # It becomes a response header: anything but a short printable ASCII address is not one.
    if not value or len(value) > 256 or not value.isascii() or not value.isprintable():
        return None
    return value


def subset_hint(metadata_context: Any) -> list[str] | None:  # a protobuf Metadata message
    """`envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset` as a list, or None if absent."""
    fm = metadata_context.filter_metadata
    if "envoy.lb.subset_hint" not in fm:
        return None
    fields = fm["envoy.lb.subset_hint"].fields
    if "x-gateway-destination-endpoint-subset" not in fields:
        return None
    v = fields["x-gateway-destination-endpoint-subset"]
    kind = v.WhichOneof("kind")
    if kind == "list_value":
        return [x.string_value.strip() for x in v.list_value.values if x.string_value.strip()]
    if kind == "string_value":
        return [s.strip() for s in v.string_value.split(",") if s.strip()]
    return []

"""The ext_proc messages the bridge sends, and how it reads the EPP's answers."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.bridge.extproc_client import BODY_CHUNK, build_messages, destination_of
from epp.extproc import messages as epp_messages


def test_headers_as_raw_value_then_body_in_chunks_of_at_most_62000_bytes():
    body = bytes(range(256)) * 4096  # 1 MiB
    msgs = build_messages({":path": "/v1/completions", "content-type": "application/json"}, body)
    first = msgs[0]
    assert first.WhichOneof("request") == "request_headers"
    assert not first.request_headers.end_of_stream
    assert [(h.key, h.raw_value, h.value) for h in first.request_headers.headers.headers] == [
        (":path", b"/v1/completions", ""),
        ("content-type", b"application/json", ""),
    ]
    chunks = [m.request_body for m in msgs[1:]]
    assert all(len(c.body) <= BODY_CHUNK == 62_000 for c in chunks)
    assert len(chunks) == 17
    assert [c.end_of_stream for c in chunks] == [False] * 16 + [True]
    assert b"".join(c.body for c in chunks) == body


def test_bodyless_request_is_one_headers_message_with_end_of_stream():
    msgs = build_messages({":method": "GET"}, b"")
    assert len(msgs) == 1 and msgs[0].request_headers.end_of_stream


def test_destination_read_from_raw_value_value_or_envoy_lb_metadata():
    # What our EPP sends: header (raw_value) and metadata.
    assert destination_of(epp_messages.route_headers_response("10.0.0.1:8000", 10, [], [])) == "10.0.0.1:8000"
    by_value = pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(
                    set_headers=[
                        base_pb2.HeaderValueOption(
                            header=base_pb2.HeaderValue(key="X-Gateway-Destination-Endpoint", value="10.0.0.2:8000")
                        )
                    ]
                )
            )
        )
    )
    assert destination_of(by_value) == "10.0.0.2:8000"
    meta_only = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
    meta_only.dynamic_metadata.fields["envoy.lb"].struct_value.fields[
        "x-gateway-destination-endpoint"
    ].string_value = "10.0.0.3:8000"
    assert destination_of(meta_only) == "10.0.0.3:8000"
    # BUFFERED-mode EPPs put it on the body response.
    assert destination_of(epp_messages.buffered_route_body_response("10.0.0.4:8000", None, [], [])) == "10.0.0.4:8000"
    assert destination_of(epp_messages.plain_body_response(False)) == ""

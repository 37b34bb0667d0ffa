"""The hand-coded per-token messages mean exactly what protobuf means by them."""

from __future__ import annotations

import itertools

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from epp.extproc import messages as msg
from epp.extproc import wire
from epp.extproc.framing import FramingError, MessageReader, Status, frame, parse_timeout, trailers

bodies = st.binary(max_size=70_000)


@given(bodies, st.booleans(), st.booleans())
def test_streamed_body_is_byte_for_byte_what_protobuf_serializes(body, eos, response):
    if len(body) > msg.BODY_CHUNK_LIMIT:
        body = body[: msg.BODY_CHUNK_LIMIT]
    [expected] = msg.streamed_body_responses(body, eos, response=response)
    assert wire.streamed_body(body, eos, response=response) == expected.SerializeToString()


@given(bodies, st.booleans())
def test_a_plain_response_chunk_is_read_as_protobuf_reads_it(body, eos):
    raw = pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos)).SerializeToString()
    assert wire.response_body_chunk(raw) == (body, eos)


@given(st.binary(max_size=300))
def test_any_bytes_are_either_declined_or_read_as_protobuf_reads_them(raw):
    fast = wire.response_body_chunk(raw)
    if fast is None:
        return
    parsed = pb.ProcessingRequest.FromString(raw)  # what the fast path accepts, protobuf accepts
    assert parsed.WhichOneof("request") == "response_body"
    assert (parsed.response_body.body, parsed.response_body.end_of_stream) == fast


@given(bodies, st.booleans())
def test_envoys_shape_with_its_empty_metadata_context_takes_the_fast_path(body, eos):
    # Envoy 1.40 sends `metadata_context {}` with every response chunk (seen on the wire).
    req = pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos))
    req.metadata_context.SetInParent()
    raw = req.SerializeToString()
    assert raw.endswith(b"\x42\x00")
    assert wire.response_body_chunk(raw) == (body, eos)


def test_messages_with_anything_more_go_to_protobuf():
    for req in (
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x", end_of_stream_without_message=True)),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x"), observability_mode=True),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=b"x")),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders()),
    ):
        assert wire.response_body_chunk(req.SerializeToString()) is None
    assert wire.response_body_chunk(b"") is None
    # truncated: the declared length runs past the end
    raw = pb.ProcessingRequest(response_body=pb.HttpBody(body=b"hello")).SerializeToString()
    assert wire.response_body_chunk(raw[:-1]) is None


def test_reader_splits_and_joins_messages_across_chunks():
    stream = frame(b"one") + frame(b"") + frame(b"three" * 10)
    r = MessageReader(1000)
    got = []
    for i in range(0, len(stream), 3):
        got.extend(r.feed(stream[i : i + 3]))
    assert got == [b"one", b"", b"three" * 10] and not r.partial
    assert MessageReader(1000).feed(stream) == got
    r = MessageReader(1000)
    r.feed(frame(b"abc")[:6])
    assert r.partial


def test_reader_refuses_oversize_and_compressed_messages():
    try:
        MessageReader(10).feed(frame(b"x" * 11))
    except FramingError as err:
        assert err.status is Status.RESOURCE_EXHAUSTED and "11 bytes" in err.message
    else:
        raise AssertionError("an oversize message was accepted")
    try:
        MessageReader(10).feed(b"\x01" + frame(b"x")[1:])
    except FramingError as err:
        assert err.status is Status.UNIMPLEMENTED
    else:
        raise AssertionError("a compressed message was accepted")


def test_timeouts_and_trailers():
    assert parse_timeout(b"10S") == 10.0 and parse_timeout(b"250m") == 0.25 and parse_timeout(b"1H") == 3600.0
    assert parse_timeout(b"123456789S") is None and parse_timeout(b"S") is None and parse_timeout(b"5x") is None
    assert trailers(Status.OK) == [(b"grpc-status", b"0")]
    assert trailers(Status.INTERNAL, "100% bad\n") == [(b"grpc-status", b"13"), (b"grpc-message", b"100%25 bad%0A")]


@given(
    messages=st.lists(st.binary(max_size=300), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_reader_gives_the_same_messages_however_the_stream_is_cut(messages, cuts):
    stream = b"".join(frame(m) for m in messages)
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    r = MessageReader(1000)
    got = []
    for a, b in itertools.pairwise(points):
        got.extend(r.feed(stream[a:b]))
    assert got == messages and not r.partial


def test_reader_refuses_an_oversize_message_from_its_header_alone():
    r = MessageReader(10)
    r.feed(b"\x00\x00")  # the header itself arrives in pieces
    with pytest.raises(FramingError) as err:
        r.feed(b"\x00\x00\x0b")
    assert err.value.status is Status.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("size", [0, 1, 62_000, 62_001, 124_000, 256_000])
@pytest.mark.parametrize("eos", [False, True])
def test_a_large_response_chunk_is_split_byte_for_byte_as_protobuf_splits_it(size, eos):
    body = (bytes(range(256)) * 1001)[:size]
    expected = [r.SerializeToString() for r in msg.streamed_body_responses(body, eos, response=True)]
    assert wire.streamed_bodies(body, eos, msg.BODY_CHUNK_LIMIT) == expected

"""Hand-coded protobuf for the one ext_proc message pair that comes once per streamed token.

A streamed response chunk arrives as `ProcessingRequest{response_body: HttpBody{body,
end_of_stream}}` and is answered with `ProcessingResponse{response_body: BodyResponse{response:
CommonResponse{body_mutation: BodyMutation{streamed_response: StreamedBodyResponse{body,
end_of_stream}}}}}`. Building and parsing those through protobuf objects costs several µs a
message in Python; reading and writing the few bytes by hand costs well under one. Anything
that is not exactly this shape returns None from `response_body_chunk` and goes through
protobuf as before, so the fast path can only be narrower than the full parser, never
different from it (tests/unit/extproc/test_wire.py holds both to the same bytes).

Field numbers (envoy/service/ext_proc/v3/external_processor.proto): ProcessingRequest.
response_body = 5; HttpBody.body = 1, end_of_stream = 2; ProcessingResponse.response_body = 4,
request_body = 3; BodyResponse.response = 1; CommonResponse.body_mutation = 3;
BodyMutation.streamed_response = 3; StreamedBodyResponse.body = 1, end_of_stream = 2.
"""

from __future__ import annotations

_REQ_RESPONSE_BODY = 0x2A  # field 5, length-delimited
_REQ_METADATA_CONTEXT = 0x42  # field 8, length-delimited
_BODY = 0x0A  # field 1, length-delimited
_EOS = 0x10  # field 2, varint
_EOS_TRUE = b"\x10\x01"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index); raises IndexError past the end, ValueError when over 10 bytes."""
    b = buf[i]
    if b < 0x80:
        return b, i + 1
    value, shift = b & 0x7F, 7
    i += 1
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def response_body_chunk(message: bytes) -> tuple[bytes, bool] | None:
    """(body, end_of_stream) when `message` is a ProcessingRequest holding response_body with
    only its body and end_of_stream fields set, plus empty metadata_context fields (Envoy sends
    one with every message); None for anything else (the
    caller then parses it with protobuf, which also reports malformed bytes)."""
    n = len(message)
    try:
        i = 0
        found: tuple[bytes, bool] | None = None
        while i < n:
            tag = message[i]
            size, j = _read_varint(message, i + 1)
            end = j + size
            if end > n:
                return None
            if tag == _REQ_RESPONSE_BODY and found is None:
                found = _http_body(message, j, end)
                if found is None:
                    return None
            elif tag != _REQ_METADATA_CONTEXT or size:  # a non-empty one is protobuf's to read
                return None
            i = end
        return found
    except (IndexError, ValueError):
        return None


def _http_body(message: bytes, i: int, end: int) -> tuple[bytes, bool] | None:
    body = b""
    eos = False
    if i < end and message[i] == _BODY:
        n, i = _read_varint(message, i + 1)
        stop = i + n
        if stop > end:
            return None
        body = message[i:stop]
        i = stop
    if i < end:
        if message[i] != _EOS:
            return None
        v, i = _read_varint(message, i + 1)
        eos = v != 0
    return (body, eos) if i == end else None


# Varints of every length a token chunk's nesting can have, looked up instead of computed.
_VARINTS = [_varint(n) for n in range(1 << 14)]


def _v(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint(n)


def _vlen(n: int) -> int:
    return 1 if n < 0x80 else 2 if n < 0x4000 else len(_varint(n))


def streamed_body(body: bytes, end_of_stream: bool, response: bool = True) -> bytes:
    """One serialized ProcessingResponse carrying `body` as a streamed_response (request or
    response side), byte for byte what protobuf's SerializeToString produces."""
    n = len(body)
    sbr = (1 + _vlen(n) + n if n else 0) + (2 if end_of_stream else 0)  # StreamedBodyResponse
    bm = 1 + _vlen(sbr) + sbr  # BodyMutation{streamed_response = 3}
    common = 1 + _vlen(bm) + bm  # CommonResponse{body_mutation = 3}
    br = 1 + _vlen(common) + common  # BodyResponse{response = 1}
    return b"".join(
        (
            b"\x22" if response else b"\x1a",
            _v(br),  # ProcessingResponse.response_body = 4 / request_body = 3
            b"\x0a",
            _v(common),
            b"\x1a",
            _v(bm),
            b"\x1a",
            _v(sbr),
            (b"\x0a" + _v(n)) if n else b"",
            body,
            _EOS_TRUE if end_of_stream else b"",
        )
    )


def streamed_bodies(body: bytes, end_of_stream: bool, limit: int) -> list[bytes]:
    """`body` as consecutive streamed_response messages of at most `limit` bytes each, EoS on
    the last: what messages.streamed_body_responses() builds, without protobuf objects."""
    starts = range(0, len(body), limit) if body else range(1)
    last = starts[-1]
    return [streamed_body(body[i : i + limit], end_of_stream and i == last) for i in starts]

"""Hypothesis strategies for hostile ext_proc streams (issue 13's fuzz).

A stream is a list of wire messages, each a serialized ProcessingRequest or raw garbage, and
what the client does after sending them: half-close and read to the end, or cancel. Three
shapes, so the fuzz reaches deep into the request path as well as the edges:

* Envoy-shaped: headers, body chunks, trailers, response headers, response chunks, trailers,
  in order, with random flags, modes, headers, bodies and status codes; two thirds of them
  carry a request a real client would send, so they are routed and count in-flight load that
  whatever follows (any status, a cancel, a missing end of stream) must release;
* Envoy-shaped, then mangled: messages dropped, repeated, swapped, garbage inserted;
* any messages in any order.

Bodies are valid completions and chats, JSON of any shape, duplicate `model` keys, deep
nesting, invalid bytes, and a few prebuilt large ones (built once: generating megabytes per
example would make the fuzz about hypothesis, not the EPP).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2
from hypothesis import strategies as st

MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "other-model", "", "a" * 300)
PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/completions?x=1",
    "/",
    "/v1/responses",
    "/v1/../v1/completions",
    "",
)
METHODS = ("POST", "GET", "PUT", "", "DELETE")
CONTROL_HEADERS = (
    "x-gateway-model-name-rewrite",
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
    "x-request-id",
    "content-type",
    "content-length",
    "x-gateway-destination-endpoint",
    "x-gateway-destination-endpoint-subset",
    "te",
)
STATUSES = ("200", "200", "200", "400", "404", "429", "500", "502", "503", "504", "abc", "", "99999")
MODES = (None, (4, 4), (4, 4), (2, 2), (3, 3), (1, 1), (0, 0), (4, 2), (2, 4), (99, 7))
LARGE = ("offload", "over-limit-chunked", "deep-nesting", "huge-single-message")
# The fuzzed EPP runs with this --max-request-body-bytes, so over-limit bodies stay cheap to send.
BODY_LIMIT = 4 << 20


@dataclass(frozen=True)
class FuzzStream:
    messages: tuple[bytes, ...]
    cancel_after: int | None  # cancel once this many messages are written; None: half-close
    settle: bool  # give the server a moment before cancelling (reaches mid-stream states)

    @property
    def size(self) -> int:
        return sum(len(m) for m in self.messages)


@cache
def large_body(kind: str, limit: int) -> tuple[bytes, ...]:
    """Bodies no example should generate byte by byte, as the chunks a client would send."""
    if kind == "offload":  # over the size parsed in the worker process (1 MiB)
        body = orjson.dumps({"model": MODELS[0], "prompt": "lorem ipsum " * 120_000, "max_tokens": 2})
        return tuple(body[i : i + 65536] for i in range(0, len(body), 65536))
    if kind == "over-limit-chunked":  # over --max-request-body-bytes, never in one message
        chunk = b"x" * 262_144
        return (b'{"model":"m","prompt":"',) + (chunk,) * (limit // len(chunk) + 2)
    if kind == "deep-nesting":  # past every JSON parser's depth limit
        return (b'{"model":"m","prompt":' + b"[" * 200_000 + b"]" * 200_000 + b"}",)
    if kind == "huge-single-message":  # over the gRPC message limit in one message
        return (b'{"model":"m","prompt":"' + b"y" * (limit + (2 << 20)) + b'"}',)
    raise KeyError(kind)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_header_key = st.one_of(
    st.sampled_from(CONTROL_HEADERS),
    st.sampled_from((":path", ":method", ":authority")),
    st.text("abcdefghijklmnopqrstuvwxyz-:_0123456789", min_size=0, max_size=24),
)
_header_value = st.one_of(_text, st.sampled_from(MODELS), st.sampled_from(("127.0.0.1:1", "high", "-1", "")))


def _json_values():
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _text,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
        max_leaves=6,
    )


@st.composite
def request_bodies(draw) -> tuple[bytes, ...]:
    """A request body as the chunks it is sent in."""
    kind = draw(
        st.sampled_from(("completion", "completion", "chat", "duplicate-model", "json", "bytes", "empty", "large"))
    )
    if kind == "large":
        return large_body(draw(st.sampled_from(LARGE)), BODY_LIMIT)
    if kind == "completion":
        obj = {
            "model": draw(st.sampled_from(MODELS)),
            "prompt": draw(st.one_of(_text, st.lists(st.integers(0, 50000), max_size=8))),
            "max_tokens": draw(st.integers(-1, 64)),
            "stream": draw(st.booleans()),
        }
        if draw(st.booleans()):
            obj.update(
                draw(
                    st.dictionaries(
                        st.sampled_from(("n", "temperature", "stream_options", "cache_salt", "model", "ignore_eos")),
                        _json_values(),
                        max_size=3,
                    )
                )
            )
        body = orjson.dumps(obj)
    elif kind == "chat":
        msgs = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(("user", "system", "assistant", "x")),
                        "content": st.one_of(_text, _json_values()),
                    }
                ),
                max_size=3,
            )
        )
        body = orjson.dumps({"model": draw(st.sampled_from(MODELS)), "messages": msgs, "stream": draw(st.booleans())})
    elif kind == "duplicate-model":
        a, b = draw(st.sampled_from(MODELS)), draw(st.sampled_from(MODELS))
        body = b'{"model":%s,"prompt":"hi","model":%s}' % (orjson.dumps(a), orjson.dumps(b))
    elif kind == "json":
        body = orjson.dumps(draw(_json_values()))
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        body = b""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=3))))
    edges = [0, *cuts, len(body)]
    return tuple(body[a:b] for a, b in itertools.pairwise(edges) if b > a) or (b"",)


def _header_map(headers: dict[str, str], raw: bool) -> base_pb2.HeaderMap:
    if raw:
        return base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
        )
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, value=v) for k, v in headers.items()])


@st.composite
def request_headers(draw, eos: bool | None = None) -> pb.ProcessingRequest:
    headers = {
        ":method": draw(st.sampled_from(METHODS)),
        ":path": draw(st.sampled_from(PATHS)),
        ":authority": "gw",
        ":scheme": "http",
        "content-type": "application/json",
    }
    if draw(st.booleans()):
        headers.update(draw(st.dictionaries(_header_key, _header_value, max_size=4)))
    for k in draw(st.lists(st.sampled_from(tuple(headers)), max_size=2)):
        headers.pop(k, None)
    req = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=_header_map(headers, draw(st.booleans())), end_of_stream=draw(st.booleans()) if eos is None else eos
        )
    )
    mode = draw(st.sampled_from(MODES))
    if mode is not None:
        req.protocol_config.request_body_mode, req.protocol_config.response_body_mode = mode
    subset = draw(
        st.one_of(
            st.none(),
            st.none(),
            st.none(),
            st.lists(
                st.sampled_from(("127.0.0.1", "127.0.0.1:1", "nonsense", "", "[::1]:80", "10.0.0.1:8000")), max_size=3
            ),
            st.just("127.0.0.1:1,nonsense"),
            st.just(3.5),
        )
    )
    if subset is not None:
        s = struct_pb2.Struct()
        field = "x-gateway-destination-endpoint-subset"
        if isinstance(subset, list):
            s.fields[field].list_value.extend(subset)
        elif isinstance(subset, str):
            s.fields[field].string_value = subset
        else:
            s.fields[field].number_value = subset
        req.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(s)
    return req


@st.composite
def plausible_request(draw, eos: bool = False) -> tuple[pb.ProcessingRequest, tuple[bytes, ...]]:
    """Headers and body a real client would send through Envoy: these are routed, so they add
    the in-flight load every later message order, status and cancel must release exactly once."""
    chat = draw(st.booleans())
    obj: dict = {
        "model": draw(st.sampled_from(MODELS[:2])),
        "stream": draw(st.booleans()),
        "max_tokens": draw(st.integers(1, 16)),
    }
    prompt = draw(st.one_of(st.text(min_size=1, max_size=60).filter(str.strip), st.just("lorem ipsum " * 300)))
    if chat:
        obj["messages"] = [{"role": "user", "content": prompt}]
    else:
        obj["prompt"] = prompt
    if draw(st.integers(0, 3)) == 0:
        obj.update(
            draw(
                st.dictionaries(
                    st.sampled_from(("temperature", "stream_options", "cache_salt", "n")), _json_values(), max_size=2
                )
            )
        )
    body = orjson.dumps(obj)
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions" if chat else "/v1/completions",
        ":authority": "gw",
        ":scheme": "http",
        "content-type": "application/json",
    }
    headers.update(
        draw(
            st.dictionaries(
                st.sampled_from(
                    (
                        "x-request-id",
                        "x-gateway-inference-objective",
                        "x-gateway-inference-fairness-id",
                        "x-gateway-model-name-rewrite",
                        "user-agent",
                    )
                ),
                st.sampled_from(("", "other-model", MODELS[0], "tenant-a", "high")),
                max_size=2,
            )
        )
    )
    req = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=_header_map(headers, True), end_of_stream=eos))
    mode = draw(st.sampled_from(((4, 4), (4, 4), (4, 4), (2, 2), (2, 4), (4, 2))))
    req.protocol_config.request_body_mode, req.protocol_config.response_body_mode = mode
    if draw(st.integers(0, 5)) == 0:  # a bare IP matches every port of it
        s = struct_pb2.Struct()
        s.fields["x-gateway-destination-endpoint-subset"].list_value.extend(["127.0.0.1"])
        req.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(s)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=2))))
    edges = [0, *cuts, len(body)]
    return req, tuple(body[a:b] for a, b in itertools.pairwise(edges) if b > a)


def _body_messages(kind: str, chunks: tuple[bytes, ...], eos_last: bool) -> list[pb.ProcessingRequest]:
    out = []
    for i, c in enumerate(chunks):
        body = pb.HttpBody(body=c, end_of_stream=eos_last and i == len(chunks) - 1)
        out.append(pb.ProcessingRequest(**{kind: body}))
    return out


@st.composite
def response_headers(draw) -> pb.ProcessingRequest:
    headers = {
        ":status": draw(st.sampled_from(STATUSES)),
        "content-type": draw(st.sampled_from(("application/json", "text/event-stream", "", "text/plain"))),
    }
    if draw(st.booleans()):
        headers.update(draw(st.dictionaries(_header_key, _header_value, max_size=3)))
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=_header_map(headers, True), end_of_stream=draw(st.integers(0, 7)) == 0)
    )


@st.composite
def response_chunks(draw) -> tuple[bytes, ...]:
    kind = draw(st.sampled_from(("json", "sse", "bytes", "empty")))
    if kind == "json":
        usage = draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"prompt_tokens": st.integers(-5, 10**6), "completion_tokens": st.integers(-5, 10**6)}
                ),
                _json_values(),
            )
        )
        body = orjson.dumps({"model": draw(st.sampled_from(MODELS)), "choices": [{"text": "hi"}], "usage": usage})
    elif kind == "sse":
        events = draw(
            st.lists(
                st.one_of(
                    st.just(b'{"choices":[{"text":"a"}]}'),
                    st.just(b"[DONE]"),
                    st.binary(max_size=30),
                    st.just(b'{"usage":{"prompt_tokens":3,"completion_tokens":2}}'),
                ),
                max_size=5,
            )
        )
        body = b"".join(b"data: " + e + b"\n\n" for e in events)
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        body = b""
    cut = draw(st.integers(0, len(body)))
    return tuple(c for c in (body[:cut], body[cut:]) if c) or (b"",)


def _trailers(kind: str) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(**{kind: pb.HttpTrailers()})


@st.composite
def envoy_shaped(draw) -> list[bytes]:
    out: list[pb.ProcessingRequest] = []
    headers_eos = draw(st.integers(0, 9)) == 0
    if draw(st.integers(0, 2)) > 0:
        headers, body = draw(plausible_request(eos=headers_eos))
    else:
        headers, body = draw(request_headers(eos=headers_eos)), draw(request_bodies())
    out.append(headers)
    if not headers_eos:
        trailers = draw(st.integers(0, 5)) == 0
        out += _body_messages("request_body", body, eos_last=not trailers or draw(st.booleans()))
        if trailers:
            out.append(_trailers("request_trailers"))
    if draw(st.integers(0, 4)) > 0:
        rh = draw(response_headers())
        out.append(rh)
        if not rh.response_headers.end_of_stream:
            trailers = draw(st.integers(0, 5)) == 0
            out += _body_messages(
                "response_body", draw(response_chunks()), eos_last=not trailers or draw(st.booleans())
            )
            if trailers:
                out.append(_trailers("response_trailers"))
    return [m.SerializeToString() for m in out]


garbage = st.one_of(
    st.binary(min_size=1, max_size=64), st.just(b"\xff" * 8), st.just(b"\x0a\x05hello"), st.just(b"\x12\x00")
)  # the last: an empty request_body oneof, valid but odd


@st.composite
def mangled(draw) -> list[bytes]:
    msgs = draw(envoy_shaped())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("drop", "repeat", "swap", "garbage", "reverse")))
        i = draw(st.integers(0, max(0, len(msgs) - 1)))
        if op == "drop" and msgs:
            msgs.pop(i)
        elif op == "repeat" and msgs:
            msgs.insert(i, msgs[i])
        elif op == "swap" and len(msgs) > 1:
            j = draw(st.integers(0, len(msgs) - 1))
            msgs[i], msgs[j] = msgs[j], msgs[i]
        elif op == "garbage":
            msgs.insert(i, draw(garbage))
        elif op == "reverse":
            msgs.reverse()
    return msgs


@st.composite
def any_order(draw) -> list[bytes]:
    pieces = draw(
        st.lists(
            st.sampled_from(("req_h", "req_b", "req_t", "resp_h", "resp_b", "resp_t", "junk", "empty")), max_size=10
        )
    )
    out: list[bytes] = []
    for p in pieces:
        if p == "req_h":
            out.append(draw(request_headers()).SerializeToString())
        elif p == "req_b":
            out += [
                m.SerializeToString()
                for m in _body_messages("request_body", draw(request_bodies()), draw(st.booleans()))
            ]
        elif p == "resp_h":
            out.append(draw(response_headers()).SerializeToString())
        elif p == "resp_b":
            out += [
                m.SerializeToString()
                for m in _body_messages("response_body", draw(response_chunks()), draw(st.booleans()))
            ]
        elif p in ("req_t", "resp_t"):
            out.append(_trailers("request_trailers" if p == "req_t" else "response_trailers").SerializeToString())
        elif p == "empty":
            out.append(b"")  # a ProcessingRequest with nothing set
        else:
            out.append(draw(garbage))
    return out


@st.composite
def fuzz_streams(draw) -> FuzzStream:
    msgs = draw(st.one_of(envoy_shaped(), envoy_shaped(), mangled(), any_order()))
    cancel_after = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, len(msgs))))
    return FuzzStream(tuple(msgs), cancel_after, draw(st.booleans()))

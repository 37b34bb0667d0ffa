"""The ext_proc stream state machine: one bidi stream per HTTP request.

Knows the wire protocol and nothing of scheduling: it builds an `IncomingRequest`, asks an
`Exchange` for a decision, and relays response data through it. Rules it enforces (Envoy
rejects anything else): request-headers answer first (withheld until the body has ended in
full-duplex mode), then body chunks in order, the last with end_of_stream; trailers last.
Rules it enforces on the peer (anyone who reaches the port can send anything): request
messages never come once the response has begun (the exchange has been settled by then,
and routing it afresh would count load that nothing releases).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.errors import EppError, ErrorCode
from epp.extproc import messages as msg
from epp.extproc import wire
from epp.requestcontrol.exchange import IncomingRequest, ResponseHeadersDecision, RouteDecision

log = logging.getLogger("epp.extproc")

_FULL_DUPLEX = 4
_BUFFERED = 2
_BUFFERED_PARTIAL = 3
_NONE = 0


class Exchange(Protocol):
    def route(self, req: IncomingRequest) -> RouteDecision | None: ...  # None: held, see try_resume()
    async def wait_to_route(self, retry: Callable[[], bool]) -> None: ...
    def route_headers_only(self, req: IncomingRequest) -> RouteDecision | None: ...  # None: as route()
    def response_headers(self, headers: dict[str, str], served: str | None = None) -> ResponseHeadersDecision: ...
    def response_chunk(self, chunk: bytes, eos: bool) -> bytes | None: ...
    def finish(self, completed: bool) -> None: ...


def headers_to_dict(header_map) -> dict[str, str]:
    out = {}
    for h in header_map.headers:
        raw = h.raw_value
        # Envoy sends raw_value; some clients (NGINX shims) send value.
        out[h.key.lower()] = raw.decode("utf-8", "replace") if raw else h.value
    return out


class StreamState:
    """Per-stream state. `handle()` returns the responses to send for one incoming message."""

    __slots__ = (
        "body_parts",
        "body_size",
        "exchange",
        "headers",
        "held",
        "max_body",
        "release_error",
        "released",
        "request_done",
        "request_mode",
        "response_eos",
        "response_mode",
        "response_started",
        "routed_with_trailers",
        "subset",
    )

    def __init__(self, exchange: Exchange, max_body: int) -> None:
        self.exchange = exchange
        self.request_mode = _FULL_DUPLEX  # assumed when protocol_config is absent (NGINX shims)
        self.response_mode = _FULL_DUPLEX
        self.headers: dict[str, str] | None = None
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.subset: list[str] | None = None
        self.request_done = False
        self.response_eos = False
        self.max_body = max_body
        self.routed_with_trailers = False
        # Set while the director holds the request (prefill gate): what to route once it may go.
        self.held: tuple[IncomingRequest, bytes, bool, list[pb.ProcessingResponse], bool] | None = None
        self.released: list[pb.ProcessingResponse] = []  # what to send once a held request is routed
        self.release_error: Exception | None = None
        self.response_started = False

    def handle(self, req: pb.ProcessingRequest) -> tuple[list[pb.ProcessingResponse], bool]:
        """Returns (responses, close_stream)."""
        kind = req.WhichOneof("request")
        if kind is not None and kind.startswith("request_") and self.response_started:
            raise EppError(ErrorCode.BAD_REQUEST, f"{kind} received after the response began")
        if kind is not None and kind.startswith("response_"):
            self.response_started = True
        if req.HasField("protocol_config"):
            pc = req.protocol_config
            self.request_mode = pc.request_body_mode
            self.response_mode = pc.response_body_mode
        if kind == "request_headers":
            return self._request_headers(req)
        if kind == "request_body":
            return self._request_body(req.request_body.body, req.request_body.end_of_stream, req)
        if kind == "request_trailers":
            return self._request_trailers(req)
        if kind == "response_headers":
            served = msg.served_endpoint(req.metadata_context) if req.HasField("metadata_context") else None
            return self._response_headers(req.response_headers, served)
        if kind == "response_body":
            return self._response_body(req.response_body.body, req.response_body.end_of_stream)
        if kind == "response_trailers":
            return self._response_trailers()
        return [], False

    # ---- request ---------------------------------------------------------------------------

    def _request_headers(self, req: pb.ProcessingRequest) -> tuple[list[pb.ProcessingResponse], bool]:
        hs = req.request_headers
        self.headers = headers_to_dict(hs.headers)
        if req.HasField("metadata_context"):
            self.subset = msg.subset_hint(req.metadata_context)
        if hs.end_of_stream:
            self.request_done = True
            incoming = IncomingRequest(self.headers, b"", self.subset)
            decision = self.exchange.route_headers_only(incoming)
            if decision is None:  # the decision is being made elsewhere (a worker process asks)
                self.held = (incoming, b"", False, [], True)
                return [], False
            return [self._headers_only(decision)], False
        if self.request_mode in (_BUFFERED, _BUFFERED_PARTIAL, _NONE) or self.request_mode == 1:
            # Envoy waits for the headers answer before it sends the body in these modes.
            return [msg.empty_request_headers_response()], False
        return [], False

    @staticmethod
    def _headers_only(decision: RouteDecision) -> pb.ProcessingResponse:
        return msg.route_headers_response(decision.destination, None, decision.set_headers, decision.remove_headers)

    def _request_body(self, chunk: bytes, eos: bool, req: pb.ProcessingRequest):
        if self.request_done:
            # Envoy can send chunks after the one marked end_of_stream for large bodies: ignore them.
            return [], False
        if self.headers is None:
            raise EppError(ErrorCode.BAD_REQUEST, "request body received before request headers")
        if req.HasField("metadata_context") and req.metadata_context.filter_metadata:
            hint = msg.subset_hint(req.metadata_context)
            if hint is not None:
                self.subset = hint
        if chunk:
            self.body_size += len(chunk)
            if self.body_size > self.max_body:
                raise EppError(ErrorCode.PAYLOAD_TOO_LARGE, f"request body larger than the {self.max_body}-byte limit")
            self.body_parts.append(chunk)
        if self.request_mode == 1:  # STREAMED: each chunk needs its own answer; we route at the end
            if not eos:
                return [msg.plain_body_response(False)], False
        elif not eos:
            return [], False
        return self._route(eos_on_body=True), False

    def _request_trailers(self, req: pb.ProcessingRequest):
        if self.request_done:
            return [msg.trailers_response(False)], False
        # Trailers tell us the body is complete (no body chunk carried end_of_stream).
        out = self._route(eos_on_body=False, tail=[msg.trailers_response(False)])
        return out, False

    def _route(self, eos_on_body: bool, tail: list[pb.ProcessingResponse] | None = None) -> list[pb.ProcessingResponse]:
        self.request_done = True
        body = b"".join(self.body_parts) if len(self.body_parts) != 1 else self.body_parts[0]
        self.body_parts = []
        incoming = IncomingRequest(self.headers or {}, body, self.subset)
        decision = self.exchange.route(incoming)
        if decision is None:
            self.held = (incoming, body, eos_on_body, tail or [], False)
            return []
        return self._routed(decision, body, eos_on_body) + (tail or [])

    def try_resume(self) -> bool:
        """Route a held request again. True when it is no longer held: its responses (or the error
        that ended it) are then in `released` / `release_error`. Never raises: it may run inside
        another stream's response path (the gate calls it when that stream's prefill ends)."""
        assert self.held is not None
        incoming, body, eos_on_body, tail, headers_only = self.held
        try:
            decision = self.exchange.route_headers_only(incoming) if headers_only else self.exchange.route(incoming)
        except Exception as exc:
            self.held, self.release_error = None, exc
            return True
        if decision is None:
            return False
        self.held = None
        self.released = (
            [self._headers_only(decision)] if headers_only else self._routed(decision, body, eos_on_body) + tail
        )
        return True

    def _routed(self, decision, body: bytes, eos_on_body: bool) -> list[pb.ProcessingResponse]:
        new_body = decision.body if decision.body is not None else body
        if self.request_mode in (_BUFFERED, _BUFFERED_PARTIAL):
            changed = new_body if new_body is not body else None
            return [
                msg.buffered_route_body_response(
                    decision.destination, changed, decision.set_headers, decision.remove_headers
                )
            ]
        if self.request_mode == 1:
            # STREAMED (non-duplex) cannot carry our header mutation after the body; best effort.
            return [msg.plain_body_response(False)]
        out = [
            msg.route_headers_response(
                decision.destination, len(new_body), decision.set_headers, decision.remove_headers
            )
        ]
        out.extend(msg.streamed_body_responses(new_body, eos_on_body, response=False))
        return out

    # ---- response --------------------------------------------------------------------------

    def _response_headers(self, hs: pb.HttpHeaders, served: str | None):
        decision = self.exchange.response_headers(headers_to_dict(hs.headers), served)
        out = [msg.response_headers_response(decision.set_headers, decision.remove_headers)]
        if hs.end_of_stream:
            self.response_eos = True
            self.exchange.finish(completed=True)
        return out, False

    def _response_body(self, chunk: bytes, eos: bool):
        if self.response_eos:
            return [], False
        if eos:
            self.response_eos = True
        mode = self.response_mode
        if mode == _FULL_DUPLEX:
            data = self.exchange.response_chunk(chunk, eos)
            if data is None:
                return [], False
            return msg.streamed_body_responses(data, eos, response=True), False
        # BUFFERED: one message with the whole body; STREAMED: one answer per chunk, unmodified.
        data = self.exchange.response_chunk(chunk, True if mode in (_BUFFERED, _BUFFERED_PARTIAL) else eos)
        if mode in (_BUFFERED, _BUFFERED_PARTIAL):
            return [msg.plain_body_response(True, data if data != chunk else None)], False
        return [msg.plain_body_response(True)], False

    def response_body_wire(self, chunk: bytes, eos: bool) -> list[bytes] | None:
        """The per-token path: a FULL_DUPLEX response chunk answered with serialized messages and
        no protobuf objects. None when the stream is in another mode (use `handle()`)."""
        if self.response_mode != _FULL_DUPLEX:
            return None
        self.response_started = True
        if self.response_eos:
            return []
        if eos:
            self.response_eos = True
        data = self.exchange.response_chunk(chunk, eos)
        if data is None:
            return []
        if len(data) <= msg.BODY_CHUNK_LIMIT:
            return [wire.streamed_body(data, eos)]
        return wire.streamed_bodies(data, eos, msg.BODY_CHUNK_LIMIT)

    def waiting(self) -> bool:
        """Whether a half-close now means the client has gone: the held request waits for room
        (not just for its body to be parsed), and the client announced a response phase, so an
        end of its stream before the response is an abort (Envoy). A client that does no
        response phase (the NGINX bridge) half-closes after its request and reads the answer."""
        if self.response_mode == _NONE:
            return False
        waiting = getattr(self.exchange, "waiting", None)
        return True if waiting is None else waiting()

    async def settle_hold(self) -> list[pb.ProcessingResponse]:
        """Wait while the director holds the request (prefill gate), then its responses.
        Raises what ended the hold if routing it failed."""
        while self.held is not None:
            await self.exchange.wait_to_route(self.try_resume)
            if self.held is not None:
                self.try_resume()
        if self.release_error is not None:
            raise self.release_error
        return self.released

    def _response_trailers(self):
        out: list[pb.ProcessingResponse] = []
        if not self.response_eos:
            self.response_eos = True
            data = self.exchange.response_chunk(b"", True)
            if data and self.response_mode == _FULL_DUPLEX:
                out.extend(msg.streamed_body_responses(data, False, response=True))
        out.append(msg.trailers_response(True))
        return out, False


def error_response(err: EppError) -> pb.ProcessingResponse:
    return msg.immediate_response(err.http_status, err.body)

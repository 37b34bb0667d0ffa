"""The ext_proc gRPC service (and grpc.health.v1) as an ASGI application over h2corn.

grpc.aio spends ~100 µs of CPU per message in its own machinery whatever the handler does
(../shared/reference/extproc-cost.md); a Rust HTTP/2 server handing DATA frames to this app
costs a fraction of that. The app writes gRPC's framing and trailers itself (framing.py) and
answers the per-token message by hand (wire.py); everything else goes through the same
`StreamState` as the grpc.aio servicer, so the protocol rules are one implementation.

Envoy must half-close ext_proc streams instead of resetting them at request end (runtime
flag `envoy.reloadable_features.ext_proc_graceful_grpc_close`): h2corn closes a connection
that resets more than 200 streams in 10 s. docs/transport.md says what to set per gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any, Protocol

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from epp.errors import EppError, ErrorCode
from epp.extproc import wire
from epp.extproc.framing import FramingError, MessageReader, Status, frames, parse_timeout, trailers
from epp.extproc.stream import Exchange, StreamState, error_response
from epp.observability.health import KNOWN_SERVICES, MAX_WATCHES, WATCH_POLL_SECONDS
from epp.observability.logs import RateLimitedLog

log = logging.getLogger("epp.extproc")
_corrupt_log = RateLimitedLog(log)
_internal_log = RateLimitedLog(log)

PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
HEALTH_LIST = "/grpc.health.v1.Health/List"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_START = {
    "type": "http.response.start",
    "status": 200,
    "trailers": True,
    "headers": [(b"content-type", b"application/grpc")],
}
_LAST_BODY = {"type": "http.response.body", "body": b"", "more_body": False}
_FromString = pb.ProcessingRequest.FromString
# How long a call the server has ended waits for the client to stop sending.
DRAIN_SECONDS = 1.0


class _Gone(Exception):
    """The client reset the stream or closed the connection: nothing more can be sent."""


class HealthSource(Protocol):
    """The decision process's HealthState, or a worker's copy of what it last pushed."""

    def status(self, service: str) -> int: ...

    async def changed(self, timeout: float) -> None: ...


class GrpcApp:
    """Serves Process (when `new_exchange` is set) and Health (when `health` is set)."""

    def __init__(self, new_exchange: Callable[[], Exchange] | None, max_body: int, health: HealthSource | None) -> None:
        self.new_exchange = new_exchange
        self.max_body = max_body
        self.max_message = max_body + (1 << 20)  # the body plus the envelope, as grpc.aio was configured
        self.health = health
        self.active_streams = 0
        self.last_activity = 0.0  # monotonic time of the last stream start or end, for the drain
        self.watches = 0
        self._streams: set[asyncio.Task] = set()
        self._watch_tasks: set[asyncio.Task] = set()

    def cut(self) -> None:
        """End every open stream now (the drain deadline has passed); each releases its load.
        Health watches end too: they would otherwise hold the server's shutdown open."""
        for task in list(self._streams) + list(self._watch_tasks):
            task.cancel()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if not _is_grpc(scope):
            await send({"type": "http.response.start", "status": 415, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"this port speaks gRPC (application/grpc)\n"})
            return
        try:
            if path == PROCESS and self.new_exchange is not None:
                await self._process(scope, receive, send)
            elif path == HEALTH_CHECK and self.health is not None:
                await self._health_check(receive, send)
            elif path == HEALTH_WATCH and self.health is not None:
                await self._health_watch(receive, send)
            elif path == HEALTH_LIST and self.health is not None:
                await self._health_list(receive, send)
            else:
                await _end(send, Status.UNIMPLEMENTED, f"unknown method {path}", started=False)
        except _Gone:
            pass

    # ---- ext_proc ----------------------------------------------------------------------------

    async def _process(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        assert self.new_exchange is not None  # routed here only when there is one
        state = StreamState(self.new_exchange(), self.max_body)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        self.active_streams += 1
        self.last_activity = time.monotonic()
        try:
            await _send(send, _START)
            timeout = _timeout(scope)
            try:
                async with asyncio.timeout(timeout) if timeout is not None else nullcontext():
                    status, message, request_open = await self._stream(state, receive, send, scope)
            except TimeoutError:
                status, message, request_open = Status.DEADLINE_EXCEEDED, "deadline exceeded", True
            if request_open and status is Status.OK:
                # OK trailers while the client still sends end its writes in a local INTERNAL error
                # (grpc-core), however the call went: let it finish sending first. The answer
                # itself (an immediate_response, say) has gone out already.
                await _drain_request(receive)
            await _end(send, status, message)
        finally:
            self._streams.discard(task)
            self.active_streams -= 1
            self.last_activity = time.monotonic()
            # Releases in-flight load if the response never finished (client gone, upstream reset...).
            state.exchange.finish(completed=False)

    async def _stream(
        self, state: StreamState, receive: Receive, send: Send, scope: dict[str, Any]
    ) -> tuple[Status, str, bool]:
        """Serves the call's messages; (status, message, whether the client is still sending)."""
        reader = MessageReader(self.max_message)
        fast = wire.response_body_chunk
        pending: asyncio.Future | None = None  # a receive() started while a request was held
        try:
            while True:
                if pending is not None:
                    m, pending = await pending, None
                else:
                    m = await receive()
                if m["type"] != "http.request":
                    raise _Gone
                data = m.get("body", b"")
                if data:
                    try:
                        messages = reader.feed(data)
                    except FramingError as err:
                        return err.status, err.message, True
                    for message in messages:
                        parsed = fast(message)
                        if parsed is not None:
                            out = state.response_body_wire(parsed[0], parsed[1])
                            if out is not None:
                                if out:
                                    await _send(
                                        send, {"type": "http.response.body", "body": frames(out), "more_body": True}
                                    )
                                continue
                        try:
                            req = _FromString(message)
                        except DecodeError:
                            _corrupt_log.warning(
                                "ext_proc stream from %s sent a message that is not a "
                                "ProcessingRequest; closed with INVALID_ARGUMENT",
                                _peer(scope),
                            )
                            return (
                                Status.INVALID_ARGUMENT,
                                ("message is not an envoy.service.ext_proc.v3.ProcessingRequest"),
                                True,
                            )
                        try:
                            responses, close = state.handle(req)
                            if state.held is not None:  # the prefill gate holds it: wait, then route again
                                responses, pending = await self._hold(state, receive)
                        except EppError as err:
                            await _send_messages(send, [error_response(err).SerializeToString()])
                            return Status.OK, "", True
                        except _Gone:
                            raise
                        except Exception:
                            _internal_log.log(
                                logging.ERROR, "internal error while processing an ext_proc message", exc_info=True
                            )
                            internal = error_response(EppError(ErrorCode.INTERNAL, "internal error"))
                            await _send_messages(send, [internal.SerializeToString()])
                            return Status.OK, "", True
                        if responses:
                            await _send_messages(send, [r.SerializeToString() for r in responses])
                        if close:
                            return Status.OK, "", True
                if not m.get("more_body", False):
                    if reader.partial:
                        return Status.INTERNAL, "the stream ended inside a message", False
                    return Status.OK, "", False
        finally:
            if pending is not None:
                # A receive() started during a hold and not read because the call ended (an
                # answer that closes it, an error): take its outcome, or a stream reset raised
                # into it later would be logged as "Task exception was never retrieved".
                _discard(pending)

    @staticmethod
    async def _hold(state: StreamState, receive: Receive) -> tuple[list[pb.ProcessingResponse], asyncio.Future | None]:
        """Wait out a hold while watching the client: a stream reset while held ends the wait
        (and the request) at once instead of at the gate's maxWait."""
        settle = asyncio.ensure_future(state.settle_hold())
        recv = asyncio.ensure_future(_next(receive))
        try:
            done, _ = await asyncio.wait((settle, recv), return_when=asyncio.FIRST_COMPLETED)
            if settle not in done:
                m = recv.result()
                # A reset ends it; so does the end of the request stream while the request waits
                # in the waiting room: Envoy closes its side gracefully (ext_proc_graceful_grpc_close)
                # only when its client has gone and it wants no answer. A body still being parsed
                # is not a wait: a plain gRPC client may half-close and still read its answer.
                if m["type"] != "http.request" or (not m.get("more_body", False) and state.waiting()):
                    raise _Gone
                await asyncio.wait((settle,))  # the peer sent more while held: read it after the hold
            responses = settle.result()
        except BaseException:
            # Gone, failed, or cancelled (the call's deadline, shutdown): neither task may outlive
            # the call, or its outcome fails later unread ("Task exception was never retrieved").
            _discard(settle)
            _discard(recv)
            raise
        return responses, recv  # a done or pending receive(): the stream loop reads it next

    # ---- grpc.health.v1 ----------------------------------------------------------------------

    async def _read_unary(self, receive: Receive) -> bytes | None:
        reader = MessageReader(64 * 1024)
        got: list[bytes] = []
        while True:
            m = await receive()
            if m["type"] != "http.request":
                raise _Gone
            got.extend(reader.feed(m.get("body", b"")))
            if not m.get("more_body", False):
                return got[0] if len(got) == 1 else None

    async def _health_request(self, receive: Receive, send: Send) -> str | None:
        try:
            raw = await self._read_unary(receive)
            if raw is None:
                raise DecodeError
            return health_pb2.HealthCheckRequest.FromString(raw).service
        except (DecodeError, FramingError):
            await _end(send, Status.INVALID_ARGUMENT, "expected one grpc.health.v1.HealthCheckRequest", started=False)
            return None

    async def _health_check(self, receive: Receive, send: Send) -> None:
        service = await self._health_request(receive, send)
        if service is None:
            return
        if service not in KNOWN_SERVICES:
            await _end(send, Status.NOT_FOUND, f"unknown service {service!r}", started=False)
            return
        await _send(send, _START)
        assert self.health is not None  # health paths are routed here only when it is served
        await _send_messages(
            send, [health_pb2.HealthCheckResponse(status=self.health.status(service)).SerializeToString()]
        )
        await _end(send, Status.OK)

    async def _health_list(self, receive: Receive, send: Send) -> None:
        await self._read_unary(receive)  # HealthListRequest has no fields
        assert self.health is not None
        health = self.health
        statuses = {n: health_pb2.HealthCheckResponse(status=health.status(n)) for n in sorted(KNOWN_SERVICES)}
        await _send(send, _START)
        await _send_messages(send, [health_pb2.HealthListResponse(statuses=statuses).SerializeToString()])
        await _end(send, Status.OK)

    async def _health_watch(self, receive: Receive, send: Send) -> None:
        service = await self._health_request(receive, send)
        if service is None:
            return
        if self.watches >= MAX_WATCHES:
            await _end(send, Status.RESOURCE_EXHAUSTED, f"at most {MAX_WATCHES} watches at a time", started=False)
            return
        self.watches += 1
        task = asyncio.current_task()
        assert task is not None and self.health is not None
        health = self.health
        self._watch_tasks.add(task)
        gone = asyncio.ensure_future(_next(receive))  # the only thing the client can still send is its reset
        try:
            await _send(send, _START)
            last = None
            while True:
                status = health.status(service)
                if status != last:
                    await _send_messages(send, [health_pb2.HealthCheckResponse(status=status).SerializeToString()])
                    last = status
                changed = asyncio.ensure_future(health.changed(WATCH_POLL_SECONDS))
                await asyncio.wait((changed, gone), return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    changed.cancel()
                    return
        finally:
            gone.cancel()
            self._watch_tasks.discard(task)
            self.watches -= 1


def _discard(task: asyncio.Future) -> None:
    """Cancel `task`, or take its outcome if it has one, so nothing is left unread."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


async def _next(receive: Receive) -> dict[str, Any]:
    return await receive()  # h2corn's awaitable is not a coroutine; asyncio.wait wants a task made of one


async def _drain_request(receive: Receive, limit: float = DRAIN_SECONDS) -> None:
    """Read and drop what the client still sends until it half-closes, for at most `limit`."""
    try:
        async with asyncio.timeout(limit):
            while True:
                m = await receive()
                if m["type"] != "http.request":
                    raise _Gone
                if not m.get("more_body", False):
                    return
    except TimeoutError:
        pass


def _is_grpc(scope: dict[str, Any]) -> bool:
    for k, v in scope["headers"]:
        if k == b"content-type":
            return v.startswith(b"application/grpc")
    return False


def _timeout(scope: dict[str, Any]) -> float | None:
    for k, v in scope["headers"]:
        if k == b"grpc-timeout":
            return parse_timeout(v)
    return None


def _peer(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown peer"


async def _send(send: Send, message: dict[str, Any]) -> None:
    try:
        await send(message)
    except Exception as exc:  # h2corn raises once the stream or connection is gone
        raise _Gone from exc


async def _send_messages(send: Send, messages: list[bytes]) -> None:
    await _send(send, {"type": "http.response.body", "body": frames(messages), "more_body": True})


async def _end(send: Send, status: Status, message: str = "", started: bool = True) -> None:
    if not started:
        await _send(send, _START)
    await _send(send, _LAST_BODY)
    await _send(send, {"type": "http.response.trailers", "headers": trailers(status, message), "more_trailers": False})

"""One ext_proc worker process: serves streams on the shared port, asks the decision process.

Started by the supervisor (epp/workers/supervisor.py) with the inherited listening socket and
the decision socket's path; exits when the decision process goes away or on SIGTERM (after
its streams have finished, at most the grace it is given).

    python -m epp.workers.worker '<json spec>'
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from epp.errors import EppError, ErrorCode
from epp.observability import logs
from epp.observability.health import KNOWN_SERVICES, NOT_SERVING, UNKNOWN
from epp.requestcontrol.exchange import IncomingRequest, ResponseHeadersDecision, RouteDecision
from epp.requestcontrol.relay import ResponseRelay
from epp.workers import ipc

log = logging.getLogger("epp.workers")

STREAMS_PUSH_SECONDS = 0.1


@dataclass
class WorkerSpec:
    index: int
    host: str
    port: int
    decisions: str  # the decision process's Unix socket
    max_body: int
    health_checking: bool
    certfile: str = ""
    keyfile: str = ""
    cert_path: str = ""  # with cert_reload: the directory watched for rotations
    cert_reload: bool = False
    drain_budget: float = 60.0
    verbosity: int = 2
    log_encoder: str = "console"


class RemoteHealth:
    """The decision process's health answers, as it last pushed them."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {s: NOT_SERVING for s in KNOWN_SERVICES}
        self._changed = asyncio.Event()

    def update(self, statuses: dict[str, int]) -> None:
        self.statuses = statuses
        self._changed.set()
        self._changed = asyncio.Event()

    def status(self, service: str) -> int:
        return self.statuses.get(service, UNKNOWN)

    async def changed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)


class DecisionClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, health: RemoteHealth) -> None:
        self.reader, self.writer = reader, writer
        self.health = health
        self.waiting: dict[int, RemoteExchange] = {}
        self._ids = itertools.count(1)
        self.send = writer.write

    def exchange(self) -> RemoteExchange:
        return RemoteExchange(self, next(self._ids))

    async def run(self) -> None:
        """Reads answers until the decision process goes away."""
        while True:
            m = await ipc.read(self.reader)
            if m is None:
                return
            kind = m[0]
            if kind == ipc.DECISION:
                ex = self.waiting.pop(m[1], None)
                if ex is not None:
                    ex.decided(m)
            elif kind == ipc.ERROR:
                ex = self.waiting.pop(m[1], None)
                if ex is not None:
                    ex.failed(EppError(ErrorCode(m[2]), m[3]))
            elif kind == ipc.HEALTH:
                self.health.update(m[1])


class RemoteExchange:
    """The `Exchange` a worker's stream talks to: decisions from the decision process, the
    response relayed here. Asking is a hold in the protocol's terms: `route()` answers None
    until the decision has come, `wait_to_route()` waits for it."""

    __slots__ = ("asked", "client", "closed", "decision", "error", "id", "prefill_pending", "relay", "waiter")

    def __init__(self, client: DecisionClient, rid: int) -> None:
        self.client = client
        self.id = rid
        self.relay = ResponseRelay()
        self.decision: RouteDecision | None = None
        self.error: EppError | None = None
        self.waiter: asyncio.Future | None = None
        self.prefill_pending = False
        self.closed = False
        self.asked = False

    def _ask(self, message: list) -> None:
        if self.closed:
            raise EppError(ErrorCode.BAD_REQUEST, "request routed after its exchange ended")
        self.asked = True
        self.waiter = asyncio.get_running_loop().create_future()
        self.client.waiting[self.id] = self
        self.client.send(ipc.encode(message))

    def route(self, req: IncomingRequest, may_hold: bool = True) -> RouteDecision | None:
        if self.decision is not None:
            d = self.decision
            if d.body is None:
                d.body = req.body
            return d
        if self.error is not None:
            raise self.error
        if self.waiter is None:
            self._ask([ipc.ROUTE, self.id, req.headers, req.body, req.subset])
        return None

    def route_headers_only(self, req: IncomingRequest) -> RouteDecision | None:
        if self.decision is not None:
            return self.decision
        if self.error is not None:
            raise self.error
        if self.waiter is None:
            self._ask([ipc.HEADERS_ONLY, self.id, req.headers])
        return None

    async def wait_to_route(self, retry: Callable[[], bool]) -> None:
        assert self.waiter is not None
        await asyncio.shield(self.waiter)

    def decided(self, m: list) -> None:
        _, _, destination, body, set_headers, remove_headers, response_headers, incoming, target, served = m
        self.decision = RouteDecision(destination, body, [tuple(h) for h in set_headers], remove_headers)
        self.relay.routed(incoming, target, [tuple(h) for h in response_headers], served)
        self.prefill_pending = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def failed(self, err: EppError) -> None:
        self.error = err
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def response_headers(self, headers: dict[str, str], served: str | None = None) -> ResponseHeadersDecision:
        return self.relay.headers(headers, served)

    def response_chunk(self, chunk: bytes, eos: bool) -> bytes | None:
        if self.prefill_pending and chunk:
            self.prefill_pending = False
            self.client.send(ipc.encode([ipc.FIRST_BYTE, self.id]))
        data = self.relay.chunk(chunk, eos)
        if eos:
            self.finish(completed=True)
        return data

    def finish(self, completed: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.waiting.pop(self.id, None)
        # Also a stream never routed here that carried usage (first seen at its response): the
        # decision process counts its tokens.
        if self.asked or (completed and self.relay.usage is not None):
            r = self.relay
            u = r.usage
            usage = [u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens] if u else None
            self.client.send(ipc.encode([ipc.FINISH, self.id, completed, r.status, usage, r.size]))


async def _connect(path: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncio.open_unix_connection(path, limit=ipc.MAX_MESSAGE)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def serve(spec: WorkerSpec) -> None:
    from epp.extproc import tls
    from epp.extproc.asgi import GrpcApp
    from epp.extproc.h2server import H2Server, TlsFiles

    reader, writer = await _connect(spec.decisions)
    health = RemoteHealth()
    client = DecisionClient(reader, writer, health)
    app = GrpcApp(client.exchange, spec.max_body, health if spec.health_checking else None)
    from epp.extproc.h2server import listening_socket

    # Each worker listens on its own SO_REUSEPORT socket: the kernel spreads connections over
    # them by hash. (One shared socket gave every connection to the same worker: 832/0.)
    sock = listening_socket(spec.host, spec.port, reuse_port=True)
    tls_files = TlsFiles(Path(spec.certfile), Path(spec.keyfile)) if spec.certfile else None
    watch = None
    if spec.cert_reload and spec.cert_path:
        watch = tls.ReloadingCertificates(spec.cert_path, tls.from_dir(spec.cert_path))
    server = H2Server(app, sock, tls_files, watch, drain_budget=spec.drain_budget)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the decision process decides when to stop
    reading = asyncio.create_task(client.run())
    stopping = asyncio.create_task(stop.wait())
    pushing = asyncio.create_task(_push_streams(app, writer, spec.index))
    print(f"epp worker {spec.index} ready", flush=True)
    await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
    if reading.done():
        log.warning("worker %d: the decision process went away; stopping", spec.index)
    pushing.cancel()
    await server.stop(grace=spec.drain_budget if stopping.done() else 0.0)
    writer.close()


async def _push_streams(app, writer: asyncio.StreamWriter, index: int) -> None:
    last = None
    while True:
        now = (app.active_streams, app.last_activity)
        if now != last:
            writer.write(ipc.encode([ipc.STREAMS, index, *now]))
            last = now
        await asyncio.sleep(STREAMS_PUSH_SECONDS)


def main() -> None:
    spec = WorkerSpec(**json.loads(sys.argv[1]))
    logs.configure(spec.verbosity, spec.log_encoder)
    try:
        asyncio.run(serve(spec))
    except (ConnectionError, FileNotFoundError) as exc:
        print(f"epp worker {spec.index}: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The decision process's side of `--workers`: routes what workers ask, accounts what they report.

Each worker holds one Unix-socket connection. Per request the worker sends ROUTE (or
HEADERS_ONLY) and gets a DECISION or an ERROR; a request the prefill gate holds is answered
when it may go, exactly as in one process (the gate and its held requests live here). FIRST_BYTE
and FINISH are fire-and-forget. A connection that ends (the worker died or was stopped)
finishes every exchange it still had open, releasing their in-flight load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from epp.errors import EppError, ErrorCode
from epp.observability.health import KNOWN_SERVICES, HealthState
from epp.requestcontrol.director import Director, Exchange
from epp.requestcontrol.exchange import IncomingRequest, RouteDecision
from epp.requests.usage import Usage
from epp.workers import ipc

log = logging.getLogger("epp.workers")


@dataclass
class WorkerStreams:
    index: int = -1
    active: int = 0  # as the worker last reported (every 0.1 s while it changes)
    last_activity: float = 0.0
    ready: bool = False  # its first report comes once its server is accepting
    routed: int = 0  # exchanges routed here and not finished: known at once, unlike the report


class DecisionServer:
    """Also the drain's stream counter: the sum of the workers' open streams."""

    def __init__(self, director: Director, health: HealthState) -> None:
        self.director = director
        self.health = health
        self.workers: list[WorkerStreams] = []
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()
        self.routed = 0  # decisions made for workers (a test reads it)

    @property
    def active_streams(self) -> int:
        return sum(max(w.active, w.routed) for w in self.workers)

    @property
    def ready_workers(self) -> int:
        return sum(w.ready for w in self.workers)

    @property
    def last_activity(self) -> float:
        return max((w.last_activity for w in self.workers), default=0.0)

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._connection, path, limit=ipc.MAX_MESSAGE)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        streams = WorkerStreams()
        self.workers.append(streams)
        exchanges: dict[int, Exchange] = {}
        holds: dict[int, asyncio.Task] = {}
        health = asyncio.create_task(self._push_health(writer))
        send = writer.write
        requests = None  # the worker's counter, from its first report on
        try:
            while True:
                m = await ipc.read(reader)
                if m is None:
                    return
                kind = m[0]
                if kind == ipc.FINISH:
                    _, rid, completed, status, usage, size = m
                    ex = exchanges.pop(rid, None)
                    hold = holds.pop(rid, None)
                    if hold is not None:
                        hold.cancel()
                    if ex is None and completed and usage:
                        ex = self.director.exchange()  # a stream first seen at its response
                    if ex is not None:
                        streams.routed = len(exchanges)
                        streams.last_activity = time.monotonic()
                        relay = ex.relay
                        relay.status, relay.size = status, size
                        relay.usage = Usage(*usage) if usage else None
                        ex.finish(completed=completed)
                elif kind == ipc.ROUTE:
                    _, rid, headers, body, subset = m
                    if requests is not None:
                        requests.inc()
                    ex = exchanges[rid] = self.director.exchange()
                    streams.routed = len(exchanges)
                    streams.last_activity = time.monotonic()
                    req = IncomingRequest(headers, body, subset)
                    try:
                        decision = ex.route(req)
                    except EppError as err:
                        send(ipc.encode([ipc.ERROR, rid, err.code.value, err.message]))
                        continue
                    if decision is None:
                        holds[rid] = asyncio.create_task(self._settle(rid, ex, req, writer, holds))
                    else:
                        send(self._decision(rid, ex, decision, req))
                elif kind == ipc.FIRST_BYTE:
                    ex = exchanges.get(m[1])
                    if ex is not None:
                        ex.first_byte()
                elif kind == ipc.HEADERS_ONLY:
                    _, rid, headers = m
                    if requests is not None:
                        requests.inc()
                    ex = exchanges[rid] = self.director.exchange()
                    try:
                        decision = ex.route_headers_only(IncomingRequest(headers))
                    except EppError as err:
                        send(ipc.encode([ipc.ERROR, rid, err.code.value, err.message]))
                        continue
                    send(
                        ipc.encode(
                            [
                                ipc.DECISION,
                                rid,
                                decision.destination,
                                None,
                                decision.set_headers,
                                decision.remove_headers,
                                [],
                                "",
                                "",
                            ]
                        )
                    )
                elif kind == ipc.STREAMS:
                    if not streams.ready:
                        streams.index, streams.ready = m[1], True
                        requests = self.director.metrics.worker_requests.labels(str(m[1]))
                    streams.active, streams.last_activity = m[2], max(streams.last_activity, m[3])
        except (ConnectionError, ValueError) as exc:
            log.warning("worker connection lost: %s", exc)
        finally:
            health.cancel()
            for hold in holds.values():
                hold.cancel()
            for ex in exchanges.values():  # the worker is gone: its requests release their load
                ex.finish(completed=False)
            streams.active = streams.routed = 0
            streams.last_activity = time.monotonic()
            self.workers.remove(streams)
            writer.close()
            self._connections.discard(task)

    def _decision(self, rid: int, ex: Exchange, d: RouteDecision, req: IncomingRequest) -> bytes:
        self.routed += 1
        relay = ex.relay
        body = d.body if d.body is not req.body else None  # unchanged: the worker has it
        return ipc.encode(
            [
                ipc.DECISION,
                rid,
                d.destination,
                body,
                d.set_headers,
                d.remove_headers,
                relay.extra_headers,
                relay.incoming_model,
                relay.target_model,
                relay.served_header,
            ]
        )

    async def _settle(
        self, rid: int, ex: Exchange, req: IncomingRequest, writer: asyncio.StreamWriter, holds: dict[int, asyncio.Task]
    ) -> None:
        """A held request: answered once the gate lets it go."""
        try:
            decision = await ex.route_when_released(req, held=True)
        except EppError as err:
            writer.write(ipc.encode([ipc.ERROR, rid, err.code.value, err.message]))
        except Exception:
            log.exception("internal error while routing a held request")
            writer.write(ipc.encode([ipc.ERROR, rid, ErrorCode.INTERNAL.value, "internal error"]))
        else:
            writer.write(self._decision(rid, ex, decision, req))
        finally:
            holds.pop(rid, None)

    async def _push_health(self, writer: asyncio.StreamWriter) -> None:
        last = None
        while True:
            statuses = {s: self.health.status(s) for s in KNOWN_SERVICES}
            if statuses != last:
                writer.write(ipc.encode([ipc.HEALTH, statuses]))
                last = statuses
            await self.health.changed(0.5)

"""gRPC health (grpc.health.v1) with the reference's service names (gie-epp.md §7).

Names: `liveness`; and `readiness`, `""`, `inference-extension` (the Helm chart's probe) and
`envoy.service.ext_proc.v3.ExternalProcessor` (Envoy's health check), which all mean "send me
traffic". Ready = the datastore is synced, this replica leads (with leader election), and it is
not draining after SIGTERM. Live = synced without leader election (the reference's rule), always
with it; a draining EPP stays live, it is finishing work.

Unlike the reference, which answers SERVING for any name without leader election, an unknown
name gets the standard answers: NOT_FOUND on Check, SERVICE_UNKNOWN on Watch (a probe with a
typo fails loudly instead of passing forever). Watch is implemented: the current status at
once, then every change.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
READY_SERVICES = frozenset({"", "readiness", "inference-extension", EXT_PROC_SERVICE})
KNOWN_SERVICES = READY_SERVICES | {"liveness"}

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# Watch streams are long-lived; a bound keeps a flood of them from holding the health port.
MAX_WATCHES = 64
# Synced-ness is read from the datastore, which does not announce it; watchers re-read this often.
WATCH_POLL_SECONDS = 0.5


class HealthState:
    def __init__(self, is_synced: Callable[[], bool], leader_election: bool = False) -> None:
        self.is_synced = is_synced
        self.leader_election = leader_election
        self._is_leader = not leader_election
        self._draining = False
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    # Leadership is set from the lease thread and draining from a signal handler: both wake watchers.
    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @is_leader.setter
    def is_leader(self, value: bool) -> None:
        self._is_leader = value
        self.notify()

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self.notify()

    def status(self, service: str) -> int:
        if service not in KNOWN_SERVICES:
            return UNKNOWN
        live = self.is_synced()
        if service == "liveness":
            return SERVING if live or self.leader_election else NOT_SERVING
        return SERVING if live and self._is_leader and not self._draining else NOT_SERVING

    def notify(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_settle, fut)

    async def changed(self, timeout: float) -> None:
        """Returns on the next notify() or after `timeout`, whichever is first."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                if (loop, fut) in self._waiters:
                    self._waiters.remove((loop, fut))


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self, state: HealthState, max_watches: int = MAX_WATCHES) -> None:
        self.state = state
        self.max_watches = max_watches
        self.watches = 0

    async def Check(self, request, context):
        if request.service not in KNOWN_SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self.state.status(request.service))

    async def List(self, request, context):
        return health_pb2.HealthListResponse(
            statuses={n: health_pb2.HealthCheckResponse(status=self.state.status(n)) for n in sorted(KNOWN_SERVICES)}
        )

    async def Watch(self, request, context):
        if self.watches >= self.max_watches:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self.max_watches} watches at a time")
        self.watches += 1
        try:
            last = None
            while True:
                status = self.state.status(request.service)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await self.state.changed(WATCH_POLL_SECONDS)
        finally:
            self.watches -= 1


def _settle(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)

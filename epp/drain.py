"""The graceful drain on SIGTERM: report not ready first, keep serving, exit once traffic has moved away.

Stopping the gRPC server at once (grpc's stop(grace) refuses new streams immediately) turned
every request that reached the EPP in the next second or so into a 500 behind a FailClose
gateway: the gateway learns that the EPP is going away (readiness, EndpointSlice, its own
health checks) only after SIGTERM. So the EPP first reports not ready (gRPC readiness
NOT_SERVING, /readyz 503), answers new streams as well as in-flight ones, and stops when no
stream has been open for QUIET_SECONDS (the gateway has moved away, or there is no traffic),
or at --graceful-shutdown-timeout, when streams still open are cut. An ext_proc stream lasts
as long as its HTTP response, so the deadline is generous: a streamed generation can take
a minute, and cutting it fails the client's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("epp")

# No stream for this long after SIGTERM: traffic has moved away (an idle EPP stops at once).
QUIET_SECONDS = 2.0
POLL_SECONDS = 0.05


class StreamCounter(Protocol):
    active_streams: int
    last_activity: float  # time.monotonic() of the last stream start or end


class Drainable(Protocol):
    draining: bool


async def drain(
    health: Drainable,
    streams: StreamCounter,
    timeout: float,
    hurry: asyncio.Event,
    quiet: float = QUIET_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Serve while draining; returns the grace left for the servers' final stop (0 when cut short)."""
    health.draining = True
    start = clock()
    deadline = start + timeout
    log.info(
        "draining: reporting not ready, still serving; stopping once no ext_proc stream has been open for "
        "%gs (at most %gs); %d streams in flight",
        quiet,
        timeout,
        streams.active_streams,
    )
    while True:
        now = clock()
        if hurry.is_set():
            log.info("second stop signal: stopping now, %d streams in flight are cut", streams.active_streams)
            return 0.0
        if now >= deadline:
            log.warning(
                "drain deadline (--graceful-shutdown-timeout %gs) reached: %d streams in flight are cut",
                timeout,
                streams.active_streams,
            )
            return 0.0
        if streams.active_streams == 0 and now - streams.last_activity >= quiet:
            log.info("drained after %.1fs: no ext_proc stream for %gs", now - start, quiet)
            return max(0.0, deadline - now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), POLL_SECONDS)

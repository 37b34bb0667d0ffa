"""Real-time driver: one asyncio task per engine, sleeping each step's duration.

Step k is computed when it starts and its tokens are delivered when it ends, at
t0 + engine.now * time_scale on the loop clock. Deadlines are absolute, so a late wake-up
(the event loop's ~1 ms timer granularity, CPU contention) shortens the next sleep rather
than accumulating drift; if the process falls further behind, the engine clock is pulled
forward to the wall clock (beyond `max_lag`) so reported latencies show the lag
instead of hiding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from epp.sim.engine import Engine, SimRequest, StepResult

log = logging.getLogger(__name__)


class RealtimeDriver:
    def __init__(
        self, engine: Engine, time_scale: float = 1.0, on_step: Callable[[StepResult], None] | None = None
    ) -> None:
        self.engine = engine
        self.time_scale = time_scale
        self.on_step = on_step
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Engine seconds the driver may trail the wall clock before the engine clock is
        # pulled forward. Below it, absolute deadlines absorb timer jitter (asyncio wakes
        # up to ~1 ms late, which at --time-scale 0.1 is a whole simulated decode step).
        self.max_lag = max(0.05, 0.02 / time_scale) if time_scale > 0 else 0.0

    def now_sim(self) -> float:
        """Engine seconds elapsed on the wall clock."""
        if self.time_scale <= 0:
            return self.engine.now
        return (self._loop.time() - self._t0) / self.time_scale

    def submit(self, req: SimRequest, arrival_time: float) -> None:
        self.engine.add_request(req, arrival_time)
        self._wake.set()

    def abort(self, request_id: str) -> bool:
        return self.engine.abort(request_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        engine, loop, scale = self.engine, self._loop, self.time_scale
        while True:
            was_idle = engine.idle
            if was_idle:
                self._wake.clear()
                await self._wake.wait()
            if was_idle or self.now_sim() - engine.now > self.max_lag:
                engine.advance_to(self.now_sim())
            try:
                res = engine.step()
            except Exception:  # a bug in the model must not take the server down
                log.exception("engine step failed")
                await asyncio.sleep(0.01)
                continue
            if scale > 0:
                delay = self._t0 + res.end_time * scale - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            if self.on_step is not None:
                try:
                    self.on_step(res)
                except Exception:
                    log.exception("step delivery failed")

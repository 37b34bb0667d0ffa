"""Starts the ext_proc worker processes, restarts one that dies, stops them all.

Each worker listens on its own SO_REUSEPORT socket on the ext_proc port and the kernel spreads
new connections over them by a hash of the connection's addresses. The decision process holds
a bound, non-listening socket in the same group for as long as it runs: the port stays taken
(a second EPP's start-up check still fails) and a restarted worker can join again. A worker
that dies is started again at once (then at most once a second); its connection to the decision
process ends with it, which releases every request
it had in flight (decisions.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace

from epp.workers.decisions import DecisionServer
from epp.workers.worker import WorkerSpec

log = logging.getLogger("epp.workers")

RESTART_BACKOFF_SECONDS = 1.0
START_TIMEOUT_SECONDS = 30.0


class WorkerPool:
    def __init__(
        self, count: int, spec: WorkerSpec, decisions: DecisionServer, on_restart: Callable[[], None] | None = None
    ) -> None:
        self.count = count
        self.on_restart = on_restart
        self.spec = spec
        self.decisions = decisions
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.restarts = 0
        self._last_start = [0.0] * count
        self._monitor: asyncio.Task | None = None
        self._stopping = False

    def _spawn(self, i: int) -> None:
        spec = replace(self.spec, index=i)
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "epp.workers.worker", json.dumps(asdict(spec))],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self._last_start[i] = time.monotonic()

    async def start(self) -> None:
        for i in range(self.count):
            self._spawn(i)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while self.decisions.ready_workers < self.count:
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"ext_proc worker {i} exited at start-up with status {p.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {self.decisions.ready_workers} of {self.count} ext_proc workers started "
                    f"within {START_TIMEOUT_SECONDS:g}s"
                )
            await asyncio.sleep(0.02)
        self._monitor = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.1)
            for i, p in enumerate(self.procs):
                if self._stopping or p is None or p.poll() is None:
                    continue
                wait = RESTART_BACKOFF_SECONDS - (time.monotonic() - self._last_start[i])
                if wait > 0 and self.restarts:
                    continue  # it died soon after its last start: try again a little later
                log.warning(
                    "ext_proc worker %d (pid %d) exited with status %s; starting it again", i, p.pid, p.returncode
                )
                self.restarts += 1
                if self.on_restart is not None:
                    self.on_restart()
                self._spawn(i)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None and p.poll() is None]

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 2.0
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in live:
            if p.poll() is None:
                p.kill()
                p.wait(5)

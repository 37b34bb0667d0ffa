"""Sample a process's RSS, open file descriptors and CPU at a fixed period, and fit slopes.

A sample sums the process and every process below it: the EPP's scrape process, body-parser
worker and ext_proc workers are part of what it costs.

For the soak and the bounded-memory stages: a leak shows as a positive RSS or fd slope once
every cache the process legitimately fills is full.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

from epp.bench.procstat import cpu_seconds, descendants, rss_bytes

_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core has spent busy since boot (all processes, this machine)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def processes_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(slots=True)
class ProcSample:
    t: float  # seconds since the sampler started
    rss_mb: float
    fds: int
    cpu_s: float


@dataclass
class Sampler:
    pid: int
    period_s: float = 5.0
    samples: list[ProcSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sample-{self.pid}", daemon=True)
        self._t0 = time.monotonic()

    def sample(self) -> ProcSample:
        rss = fds = 0
        cpu = 0.0
        os.kill(self.pid, 0)  # ProcessLookupError once the process itself is gone
        for pid in descendants(self.pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # exited in between
                rss += rss_bytes(pid)
                fds += fd_count(pid)
                cpu += cpu_seconds(pid)
        s = ProcSample(time.monotonic() - self._t0, rss / 1e6, fds, cpu)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (FileNotFoundError, ProcessLookupError):
                return  # the process is gone; the stage reports that
            self._stop.wait(self.period_s)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[ProcSample]:
        self._stop.set()
        self._thread.join(self.period_s + 5)
        return self.samples

    @property
    def peak_rss_mb(self) -> float:
        return max((s.rss_mb for s in self.samples), default=0.0)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 for fewer than 3 points."""
    if len(points) < 3:
        return 0.0
    xs, ys = zip(*points, strict=True)
    if len(set(xs)) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope * 60.0


def second_half(samples: list[ProcSample], start_s: float = 0.0) -> list[ProcSample]:
    """Samples after `start_s` and in the second half of the run, whichever is later."""
    if not samples:
        return []
    cut = max(start_s, samples[0].t + (samples[-1].t - samples[0].t) / 2)
    return [s for s in samples if s.t >= cut]

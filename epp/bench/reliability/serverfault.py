"""A model server dies (kill -9) or hangs (SIGSTOP) under load, then comes back.

The black-hole check of issue 13: while the server is gone, what share of the EPP's picks
still go to its endpoints, and once it is back, how long until its endpoints are picked again.
Picks are read from the EPP's own per-endpoint counter (picks.py), so a pick counts whether
or not the dead server could have answered it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from epp.bench.reliability.load import LoadResult, closed_loop
from epp.bench.reliability.picks import read_picks_async, since
from epp.bench.reliability.stack import EppProcess, Gateway, SimProcess


@dataclass
class FaultResult:
    fault: str  # "kill" | "freeze"
    window_s: float
    picks_total: int  # every pick in the window after the fault
    picks_to_victim: int  # of those, to the victim's endpoints
    per_second_to_victim: list[float] = field(default_factory=list)  # victim's share, second by second
    back_first_s: float | None = None  # after its return: first pick to any of its endpoints
    back_all_s: float | None = None  # ... and to every one of them
    victim_endpoints: int = 0
    requests: int = 0
    failures_during: int = 0  # client requests started during the window that failed
    failures_after_back: int = 0  # ... started after every victim endpoint was picked again

    @property
    def victim_share(self) -> float:
        return self.picks_to_victim / self.picks_total if self.picks_total else 0.0


def _victim_picks(c: Counter[int], ports: set[int]) -> int:
    return sum(v for p, v in c.items() if p in ports)


async def run_server_fault(
    gw: Gateway,
    epp: EppProcess,
    victim: SimProcess,
    *,
    fault: str = "kill",
    clients: int = 16,
    warmup_s: float = 3.0,
    window_s: float = 20.0,
    back_timeout_s: float = 10.0,
    after_s: float = 2.0,
    progress: Callable[[str], None] = lambda _: None,
) -> FaultResult:
    ports = set(victim.ports)
    stop = asyncio.Event()
    load = LoadResult()
    loader = asyncio.create_task(closed_loop(gw.url, clients, stop, load))
    result = FaultResult(fault, window_s, 0, 0, victim_endpoints=len(ports))
    async with httpx.AsyncClient(timeout=10) as http:
        try:
            await asyncio.sleep(warmup_s)
            before = await read_picks_async(http, epp.metrics_url)
            if not _victim_picks(since(before, Counter()), ports):
                raise RuntimeError("the victim's endpoints got no picks before the fault: nothing to measure")
            progress(f"{fault}: victim {victim.hostports[0]}.. ({len(ports)} endpoints), {clients} clients")
            t_fault = time.monotonic()
            victim.kill() if fault == "kill" else victim.freeze()
            last = before
            while time.monotonic() - t_fault < window_s:
                await asyncio.sleep(min(1.0, window_s - (time.monotonic() - t_fault)))
                now = await read_picks_async(http, epp.metrics_url)
                step = since(now, last)
                total = sum(step.values())
                result.per_second_to_victim.append(round(_victim_picks(step, ports) / total, 3) if total else 0.0)
                last = now
            t_end = time.monotonic()
            window = since(last, before)
            result.picks_total = sum(window.values())
            result.picks_to_victim = _victim_picks(window, ports)
            result.failures_during = load.failures(t_fault, t_end)
            progress(
                f"{fault}: {result.picks_to_victim}/{result.picks_total} picks to the victim in "
                f"{window_s:g} s ({result.victim_share:.1%})"
            )

            if fault == "kill":
                await asyncio.to_thread(victim.restart)
            else:
                victim.thaw()
            t_back = time.monotonic()
            at_return = await read_picks_async(http, epp.metrics_url)
            picked: set[int] = set()
            while time.monotonic() - t_back < back_timeout_s and picked != ports:
                await asyncio.sleep(0.05)
                now = await read_picks_async(http, epp.metrics_url)
                newly = {p for p, v in since(now, at_return).items() if p in ports and v > 0}
                if newly and result.back_first_s is None:
                    result.back_first_s = round(time.monotonic() - t_back, 3)
                picked |= newly
            if picked == ports:
                result.back_all_s = round(time.monotonic() - t_back, 3)
            progress(f"{fault}: back in rotation after {result.back_first_s} s (all endpoints: {result.back_all_s} s)")
            t_all = time.monotonic()
            await asyncio.sleep(after_s)
            result.failures_after_back = load.failures(t_all, time.monotonic() - 1.0)
        finally:
            stop.set()
            await loader
    result.requests = len(load.outcomes)
    return result

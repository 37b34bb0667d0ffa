"""The flow controller: the one place where requests wait in the EPP.

Two reasons to wait, one waiting room:
- **queued** (flow control on): the pool is saturated for the request's priority band. Bands are
  served highest priority first, flows inside a band by the fairness policy, requests inside a
  flow by the ordering policy. Each band dispatches while the pool's saturation is below the
  band's ceiling (usage-limit policy); a band that must wait stops only bands whose ceiling it
  shares or exceeds, never one that may still go.
- **parked** (prefill gate, on or off): the request was dispatched and scheduled, but the
  endpoint it wants already runs `maxPerEndpoint` long prefills; it is scheduled again, oldest
  first, when one of them ends (late binding).

Dispatch is driven by events, not a ticker: an arrival, a first response byte, a completion, a
scraped page, an endpoint added or removed each `kick()` one pass, and a pass dispatches as many
requests as fit, re-reading saturation after every one (the dispatched request's pick is already
counted in it). A 100 ms watchdog covers a wake-up nothing sends (a dead scrape).

Dispatching a request runs its scheduling right there (`Waiter.try_dispatch`), so the next
reading sees its load. Everything runs on the decision process's event loop: no locks.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from epp.datalayer.endpoint import Endpoint
from epp.errors import EppError, ErrorCode
from epp.flowcontrol.config import BandSettings, FlowSettings
from epp.flowcontrol.ordering import SloDeadlineOrdering, slo_deadline
from epp.flowcontrol.registry import Band, Registry
from epp.flowcontrol.ticket import Outcome, State, Ticket, Waiter
from epp.observability.flowmetrics import FlowMetrics

log = logging.getLogger("epp.flowcontrol")

DEFAULT_FLOW = "default-flow"
MAX_PER_PASS = 512  # then yield to the loop (streams keep flowing) and go on in the next pass
WATCHDOG = 0.1
READING_TTL = 0.02  # the reference caches its pool view for 50 ms
GC_EVERY = 60.0
FLOW_IDLE = 300.0  # reference: flows idle 5 min are forgotten, dynamic bands after 10 min
BAND_IDLE = 600.0


def flow_error(outcome: Outcome, llmd: bool) -> EppError:
    """The client's answer for a wait that ended without a route (flowcontrol.md §2)."""
    if outcome is Outcome.REJECTED_CAPACITY:
        return EppError(ErrorCode.RESOURCE_EXHAUSTED, "request rejected pre-queue: queue at capacity")
    if outcome is Outcome.REJECTED_NO_ENDPOINTS:
        return EppError(
            ErrorCode.SERVICE_UNAVAILABLE, "no endpoints available: request rejected pre-queue: queue at capacity"
        )
    if outcome is Outcome.EVICTED_TTL:
        return EppError(
            ErrorCode.RESOURCE_EXHAUSTED if llmd else ErrorCode.SERVICE_UNAVAILABLE,
            "request timed out in queue: request evicted from queue: request TTL expired",
        )
    if outcome is Outcome.EVICTED_NO_ENDPOINTS:
        return EppError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "request timed out in queue and no endpoints are "
            "available: request evicted from queue: request TTL expired",
        )
    if outcome is Outcome.EVICTED_CONTEXT_CANCELLED:
        return EppError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "client disconnected: request evicted from queue: request context cancelled: context canceled",
        )
    if llmd:
        return EppError(ErrorCode.SERVICE_UNAVAILABLE, "flow controller shutting down: request evicted from queue")
    return EppError(ErrorCode.INTERNAL, "internal flow control error: flow controller is not running")


def _band(b: BandSettings) -> Band:
    return Band(b.priority, b.max_bytes, b.max_requests, b.fairness, b.ordering)


class FlowController:
    def __init__(
        self, settings: FlowSettings, endpoints: Callable[[], Sequence[Endpoint]], metrics: FlowMetrics
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        assert settings.detector is not None and settings.usage_limit is not None
        self.detector = settings.detector.detector(settings.enabled)  # type: ignore[attr-defined]
        self.usage_limit = settings.usage_limit
        self.endpoints = endpoints
        self.metrics = metrics
        self._cycle = metrics.cycle.labels()
        t, nt = settings.template, settings.negative_template
        assert t is not None and nt is not None
        self.registry = Registry([_band(b) for b in settings.bands], lambda p: _band(t(p)), lambda p: _band(nt(p)))
        self.parked: list[Ticket] = []  # oldest first: the prefill gate frees slots in arrival order
        self._seq = itertools.count()
        self._pump_pending = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._empty: bool | None = None  # the pool's regime: has it no endpoint?
        self._regime_since = time.monotonic()
        self._ceilings_for: tuple[int, ...] = ()
        self._ceilings: list[float] = []
        self._next_gc = time.monotonic() + GC_EVERY
        self.closed = False
        self.dispatched = 0  # from a queue (the fast path is not counted)
        self.last_saturation = 0.0
        self._read_at = -1.0  # when last_saturation was read (monotonic); -1: not trusted
        self._since_read = 0  # requests dispatched on the fast path since

    # ---- entering -----------------------------------------------------------------------------

    def submit(
        self,
        waiter: Waiter,
        flow_id: str,
        priority: int,
        size: int,
        tokens: int,
        headers: Mapping[str, str],
        model_label: str = "",
        target_label: str = "",
    ) -> Ticket:
        """Admit a request: DISPATCHED (go now) or QUEUED (await `ticket.done`); raises the
        client's error when it cannot wait (capacity)."""
        now = time.monotonic()
        flow_id = flow_id or DEFAULT_FLOW
        t = Ticket(
            waiter,
            flow_id,
            priority,
            size,
            tokens,
            now,
            next(self._seq),
            labels=(self.metrics.fairness_label(flow_id), str(priority), model_label, target_label),
        )
        if self.closed:
            t.finalize(Outcome.EVICTED_OTHER)
            self.metrics.outcome(t.labels, Outcome.EVICTED_OTHER.value, 0.0)
            raise flow_error(Outcome.EVICTED_OTHER, self.settings.llmd)
        reg = self.registry
        band = reg.band(priority, now)
        band.last_active = now
        t.band = band
        if isinstance(band.ordering, SloDeadlineOrdering):
            t.slo_deadline = slo_deadline(headers, now)
        eps = self.endpoints()
        self._regime(eps, now)
        if not self._waiting_at_or_above(priority):
            ceiling = self._ceiling(band)
            if self._surely_below(ceiling, len(eps), now) or self._read(eps, now) < ceiling:
                self._go(t, now)
                self._since_read += 1
                return t
        if not self._has_capacity(band, size):
            outcome = Outcome.REJECTED_NO_ENDPOINTS if self.settings.llmd and not eps else Outcome.REJECTED_CAPACITY
            t.finalize(outcome)
            self.metrics.outcome(t.labels, outcome.value, 0.0)
            raise flow_error(outcome, self.settings.llmd)
        reg.add(t, band, band.ordering.key(t, self._ttl()), now)
        t.regime_since = now
        t.done = asyncio.get_running_loop().create_future()
        self._arm_ttl(t, now)
        size_g, bytes_g = self.metrics.queue(t.labels)
        size_g.inc()
        bytes_g.inc(size)
        self.metrics.queued_gauge.inc()
        self.kick()
        return t

    def _read(self, eps: Sequence[Endpoint], now: float, backlog: bool = False) -> float:
        sat = self.last_saturation = self.detector.saturation(eps, now, backlog)
        # Only an arrival's reading is reused by later arrivals (_surely_below); a pass reads
        # afresh before every dispatch anyway.
        self._read_at, self._since_read = (-1.0 if backlog else now), 0
        return sat

    def _surely_below(self, ceiling: float, n: int, now: float) -> bool:
        """Whether the last reading, plus the most the picks since could have added, is still
        below `ceiling`: then this arrival goes without a fresh reading (an O(endpoints) loop,
        0.7 ms with 1,000 of them). A reading is trusted for READING_TTL at most, and a scraped
        page or an endpoint change drops it (kick)."""
        if now - self._read_at > READING_TTL:
            return False
        step = self.detector.step(n)
        return step is not None and self.last_saturation + (self._since_read + 1) * step < ceiling

    def _waiting_at_or_above(self, priority: int) -> bool:
        for b in self.registry.bands:
            if b.priority < priority:
                return False
            if b.count:
                return True
        return False

    def _has_capacity(self, band: Band, size: int) -> bool:
        """The four limits (0 = unlimited); a request that brings a count exactly to its limit fits."""
        s, r = self.settings, self.registry
        return not (
            (s.max_requests and r.count + 1 > s.max_requests)
            or (s.max_bytes and r.bytes + size > s.max_bytes)
            or (band.max_requests and band.count + 1 > band.max_requests)
            or (band.max_bytes and band.bytes + size > band.max_bytes)
        )

    def _ceiling(self, band: Band) -> float:
        bands = self.registry.bands
        prios = tuple(b.priority for b in bands)
        if prios != self._ceilings_for:
            self._ceilings_for, self._ceilings = prios, self.usage_limit.ceilings(list(prios))
        return self._ceilings[prios.index(band.priority)] if len(prios) > 1 else self._ceilings[0]

    def _go(self, t: Ticket, now: float) -> None:
        t.finalize(Outcome.DISPATCHED)
        t.state = State.DONE
        self.metrics.outcome(t.labels, Outcome.DISPATCHED.value, now - t.enqueued)
        band = t.band
        assert band is not None
        band.fairness.dispatched(t.flow_id, t.tokens, now)

    # ---- leaving ------------------------------------------------------------------------------

    def cancel(self, t: Ticket) -> None:
        """The client went away while its request waited: it leaves now and costs nothing more."""
        if t.state is State.QUEUED:
            self._dequeue(t)
            if t.finalize(Outcome.EVICTED_CONTEXT_CANCELLED):
                self.metrics.outcome(t.labels, Outcome.EVICTED_CONTEXT_CANCELLED.value, time.monotonic() - t.enqueued)
            t.wake()
            self.kick()  # its place may have been what blocked a capacity check; harmless otherwise
        elif t.state is State.PARKED:
            self._unpark(t)
            t.wake()

    def served(self, t: Ticket, prompt_tokens: int, completion_tokens: int) -> None:
        """The response's usage: token fairness charges what the request really cost."""
        if t.outcome is Outcome.DISPATCHED and t.band is not None:
            delta = prompt_tokens - t.tokens if prompt_tokens > 0 else 0
            t.band.fairness.served(t.flow_id, delta, max(0, completion_tokens), time.monotonic())

    def _dequeue(self, t: Ticket) -> None:
        self.registry.remove(t)
        size_g, bytes_g = self.metrics.queue(t.labels)
        size_g.dec()
        bytes_g.dec(t.size)
        self.metrics.queued_gauge.dec()
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None

    # ---- dispatch -----------------------------------------------------------------------------

    def kick(self) -> None:
        """Something may have made room: run one dispatch pass soon (passes coalesce)."""
        self._read_at = -1.0  # the pool changed: the next arrival reads saturation afresh
        if self._pump_pending or not self.registry.count:
            return
        self._pump_pending = True
        try:
            asyncio.get_running_loop().call_soon(self._pump)
        except RuntimeError:  # no loop (shutting down): nothing can be dispatched anyway
            self._pump_pending = False

    def _pump(self) -> None:
        self._pump_pending = False
        reg = self.registry
        if not reg.count:
            return
        t0 = time.perf_counter()
        now = time.monotonic()
        eps = self.endpoints()
        self._regime(eps, now)
        n = 0
        while reg.count and n < MAX_PER_PASS:
            sat = self._read(eps, now, backlog=True)
            t = self._next(sat, now)
            if t is None:
                break
            self._dispatch(t, now)
            n += 1
        self.metrics.set_saturation(self.last_saturation)
        self._cycle.observe(time.perf_counter() - t0)
        if now >= self._next_gc:
            self._collect(now)
        if reg.count:
            if n >= MAX_PER_PASS:
                self.kick()
            elif self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().call_later(WATCHDOG, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        self.kick()

    def _next(self, sat: float, now: float) -> Ticket | None:
        for band in self.registry.bands:
            if not band.count or sat >= self._ceiling(band):
                continue
            q = band.fairness.pick(band, now)
            if q is not None:
                return q.pop()
        return None

    def _dispatch(self, t: Ticket, now: float) -> None:
        self._dequeue(t)
        self.dispatched += 1
        self.metrics.dispatches.inc()
        self._go(t, now)
        self._try(t)

    def _try(self, t: Ticket) -> None:
        try:
            done = t.waiter.try_dispatch()
        except Exception:  # the waiter promises not to raise; if it does, its request ends here
            log.exception("dispatching a request failed")
            t.waiter.evicted(EppError(ErrorCode.INTERNAL, "internal flow control error: dispatch failed"))
            done = True
        if done:
            if t.state is State.PARKED:
                self._unpark(t)
            t.wake()

    # ---- TTL ----------------------------------------------------------------------------------

    def _ttl(self) -> float:
        s = self.settings
        return s.no_endpoint_ttl if self._empty and s.split_budget else s.ttl

    def _arm_ttl(self, t: Ticket, now: float) -> None:
        ttl = self._ttl()
        if ttl <= 0:
            return
        delay = max(0.0, t.regime_since + ttl - now)
        t.timer = asyncio.get_running_loop().call_later(delay, self._expire, t)

    def _expire(self, t: Ticket) -> None:
        t.timer = None
        if t.state is not State.QUEUED:
            return
        self._dequeue(t)
        empty = bool(self._empty)
        outcome = Outcome.EVICTED_NO_ENDPOINTS if empty and self.settings.llmd else Outcome.EVICTED_TTL
        if t.finalize(outcome):
            self.metrics.outcome(t.labels, outcome.value, time.monotonic() - t.enqueued)
            t.waiter.evicted(flow_error(outcome, self.settings.llmd))
        t.wake()

    def _regime(self, eps: Sequence[Endpoint], now: float) -> None:
        """An empty pool and a pool with endpoints are two regimes, each with its own budget
        (llm-d: noEndpointRequestTTL); a request that waited through a cold start starts afresh."""
        empty = not eps
        if empty is self._empty:
            return
        first = self._empty is None
        self._empty, self._regime_since = empty, now
        if first or not self.settings.split_budget:
            return
        for t in self._queued():
            if t.timer is not None:
                t.timer.cancel()
                t.timer = None
            t.regime_since = now
            self._arm_ttl(t, now)

    def _queued(self) -> list[Ticket]:
        return [t for b in self.registry.bands for q in b.flows.values() for _, t in q.heap if t.state is State.QUEUED]

    # ---- the prefill gate's parking ---------------------------------------------------------

    def park(self, waiter: Waiter, t: Ticket | None, gate, arrival: float) -> Ticket:
        """Keep a scheduled request until a long prefill ends (or its recheck / maxWait)."""
        now = time.monotonic()
        if t is None:
            t = Ticket(waiter, "", 0, 0, 0, arrival, next(self._seq))
        if t.state is not State.PARKED:
            t.state, t.gate, t.parked_since = State.PARKED, gate, now
            t.enqueued = arrival  # the gate frees slots in arrival order
            bisect.insort(self.parked, t, key=lambda x: (x.enqueued, x.seq))
            if t.done is None or t.done.done():
                t.done = asyncio.get_running_loop().create_future()
            self.metrics.gate_gauge.inc()
        if t.timer is not None:
            t.timer.cancel()
        wait = max(0.0, min(gate.recheck, gate.max_wait - (now - arrival)))
        t.timer = asyncio.get_running_loop().call_later(wait, self._recheck, t)
        return t

    def _recheck(self, t: Ticket) -> None:
        t.timer = None
        if t.state is State.PARKED:
            self._try(t)
            if t.state is State.PARKED and t.timer is None:  # not re-parked by its scheduling
                self.park(t.waiter, t, t.gate, t.enqueued)

    def _unpark(self, t: Ticket) -> None:
        i = bisect.bisect_left(self.parked, (t.enqueued, t.seq), key=lambda x: (x.enqueued, x.seq))
        if i < len(self.parked) and self.parked[i] is t:
            del self.parked[i]
        else:
            self.parked.remove(t)
        t.state = State.NEW
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        self.metrics.gate_gauge.dec()

    def gate_released(self, endpoints: Sequence[Endpoint]) -> None:
        """A long prefill finished: the oldest parked request that can use the freed slot goes
        now, and while some endpoint still has a free slot the next ones try too (at most one
        round per endpoint). Not every parked request on every release: each try is a full
        scheduling pass, and with many parked 200 KB prompts that was most of the EPP's CPU.
        The rest recheck on their own timers."""
        placed, extra = False, len(endpoints)
        for t in list(self.parked):
            if t.state is not State.PARKED:
                continue
            if placed:
                gate = t.gate
                assert gate is not None  # a parked ticket is parked by a gate
                if extra <= 0 or not any(e.inflight.long_prefills < gate.max_per_endpoint for e in endpoints):
                    return
                extra -= 1
            was = t.state
            self._try(t)
            if t.state is not was:
                placed = True

    # ---- upkeep -------------------------------------------------------------------------------

    def _collect(self, now: float) -> None:
        self._next_gc = now + GC_EVERY
        self.registry.collect(now, FLOW_IDLE, BAND_IDLE)
        for b in self.registry.bands:
            b.fairness.sweep(now)

    @property
    def queued(self) -> int:
        return self.registry.count

    def close(self) -> None:
        """Shutdown: every waiting request gets its answer now."""
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        err = flow_error(Outcome.EVICTED_OTHER, self.settings.llmd)
        for t in self._queued():
            self._dequeue(t)
            if t.finalize(Outcome.EVICTED_OTHER):
                self.metrics.outcome(t.labels, Outcome.EVICTED_OTHER.value, time.monotonic() - t.enqueued)
                t.waiter.evicted(err)
            t.wake()
        for t in list(self.parked):
            self._unpark(t)
            t.waiter.evicted(err)
            t.wake()

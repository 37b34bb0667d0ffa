"""Virtual-time driver: a discrete-event loop over several engines, no sleeping.

Same semantics as the real-time driver: a request reaches its engine
`frontend_latency` after it arrives; an idle engine starts a step as soon as work
arrives; a busy one takes the next step when the current one ends; arrivals during a
step wait for the next step. Thousands of requests across a fleet run in seconds.

    fleet = VirtualFleet([Engine(cfg) for _ in range(4)])
    records = fleet.run_trace(trace, route=lambda item, fleet: ...)
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from epp.sim.engine import Engine, SimRequest, StepResult


@dataclass(frozen=True, slots=True)
class TraceItem:
    arrival: float  # seconds since the start of the trace
    prompt_token_ids: list[int]
    max_tokens: int
    output_len: int | None = None  # None = max_tokens (ignore_eos)
    lora: str | None = None
    request_id: str | None = None
    replica: int | None = None  # fixed target; None lets the route function decide
    output_key: int = 0


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    replica: int
    arrival: float
    first_token_time: float
    finish_time: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    preemptions: int
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.first_token_time - self.arrival

    @property
    def e2e(self) -> float:
        return self.finish_time - self.arrival


# The engine index, or None to hold the request in the router: it arrives again at `retry_parked()`.
Route = Callable[[TraceItem, "VirtualFleet"], "int | None"]

_ARRIVE, _ADD, _STEP_END, _CALL = 0, 1, 2, 3


class VirtualFleet:
    def __init__(
        self, engines: list[Engine], frontend_latency: float | None = None, keep_token_times: bool = False
    ) -> None:
        self.engines = engines
        self.frontend_latency = frontend_latency
        self.keep_token_times = keep_token_times
        self.now = 0.0
        self.records: list[RequestRecord] = []
        self.on_step: Callable[[int, StepResult], None] | None = None
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._busy = [False] * len(engines)
        self._ids = itertools.count()
        self._route: Route | None = None
        self._open: dict[SimRequest, RequestRecord] = {}
        self._parked: list[tuple[TraceItem, float]] = []

    def _push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def submit(self, item: TraceItem, replica: int | None = None) -> None:
        """Queue an arrival; the route (or `replica`, or item.replica) picks the engine then."""
        self._push(item.arrival, _ARRIVE, (item, replica))

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        self._push(t, _CALL, fn)

    def run_trace(
        self, trace: list[TraceItem], route: Route | None = None, until: float | None = None
    ) -> list[RequestRecord]:
        self._route = route
        for item in trace:
            self.submit(item)
        self.run(until)
        return self.records

    def run(self, until: float | None = None) -> None:
        heap = self._heap
        while heap:
            if until is not None and heap[0][0] > until:
                self.now = until
                return
            t, _, kind, payload = heapq.heappop(heap)
            self.now = t
            if kind == _STEP_END:
                self._step_end(payload)  # type: ignore[arg-type]
            elif kind == _ADD:
                self._add(*payload)  # type: ignore[misc]
            elif kind == _ARRIVE:
                self._arrive(*payload)  # type: ignore[misc]
            else:
                payload()  # type: ignore[operator]

    def retry_parked(self, go_on: Callable[[bool], bool] | None = None) -> None:
        """Route the requests the router held again, oldest first, keeping their arrival times.
        `go_on(placed)` is asked before each try after the first (placed: whether one of this
        round's tries was placed); False leaves the rest parked, in order."""
        parked, self._parked = self._parked, []
        placed = False
        for k, (item, arrival) in enumerate(parked):
            if k and go_on is not None and not go_on(placed):
                self._parked.extend(parked[k:])
                return
            before = len(self._parked)
            self._arrive(item, None, arrival)
            if len(self._parked) == before:
                placed = True

    @property
    def parked(self) -> int:
        return len(self._parked)

    def _arrive(self, item: TraceItem, replica: int | None, arrival: float | None = None) -> None:
        arrival = self.now if arrival is None else arrival
        idx = replica if replica is not None else item.replica
        if idx is None:
            idx = self._route(item, self) if self._route else 0
            if idx is None:
                self._parked.append((item, arrival))
                return
        eng = self.engines[idx]
        rid = item.request_id or f"req-{next(self._ids)}"
        req = SimRequest(
            request_id=rid,
            prompt_token_ids=list(item.prompt_token_ids),
            max_tokens=item.max_tokens,
            output_len=item.output_len,
            lora=item.lora,
            output_key=item.output_key,
        )
        fl = self.frontend_latency if self.frontend_latency is not None else eng.cost.frontend_latency
        self._push(self.now + fl, _ADD, (idx, req, arrival))

    def _add(self, idx: int, req: SimRequest, arrival: float) -> None:
        eng = self.engines[idx]
        eng.add_request(req, arrival)
        self._open[req] = RequestRecord(req.request_id, idx, arrival, -1.0, -1.0, req.num_prompt_tokens, 0, 0, 0)
        if not self._busy[idx]:
            self._start_step(idx)

    def _start_step(self, idx: int) -> None:
        eng = self.engines[idx]
        eng.advance_to(self.now)
        res = eng.step()
        self._busy[idx] = True
        self._push(res.end_time, _STEP_END, (idx, res))

    def _step_end(self, payload: tuple[int, StepResult]) -> None:
        idx, res = payload
        for ev in res.tokens:
            req = ev.request
            rec = self._open.get(req)
            if rec is None:
                continue
            if ev.index == 0:
                rec.first_token_time = res.end_time
            if self.keep_token_times:
                rec.token_times.append(res.end_time)
            if ev.finished:
                rec.finish_time = res.end_time
                rec.completion_tokens = req.num_output_tokens
                rec.cached_tokens = max(0, req.num_cached_tokens)
                rec.preemptions = req.num_preemptions
                del self._open[req]
                self.records.append(rec)
        if self.on_step is not None:
            self.on_step(idx, res)
        self._busy[idx] = False
        if not self.engines[idx].idle:
            self._start_step(idx)

"""The waiting room's shape: priority bands, each holding one queue per flow (fairness id).

Only the controller writes here (one event loop: no locks). Counts and bytes are kept exact on
every add and removal, so capacity checks and metrics never see a request that has left (the
reference keeps finalized "zombies" counted until a 1 s sweep).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epp.flowcontrol.ticket import State, Ticket

if TYPE_CHECKING:
    from epp.flowcontrol.fairness import FairnessPolicy
    from epp.flowcontrol.ordering import OrderingPolicy


class FlowQueue:
    """One flow's requests in one band: a heap on the ordering policy's key, with lazy removal."""

    __slots__ = ("band", "bytes", "count", "flow_id", "heap", "last_active")

    def __init__(self, flow_id: str, band: Band, now: float) -> None:
        self.flow_id = flow_id
        self.band = band
        self.heap: list[tuple[tuple, Ticket]] = []
        self.count = 0
        self.bytes = 0
        self.last_active = now

    def push(self, ticket: Ticket, key: tuple) -> None:
        heapq.heappush(self.heap, (key, ticket))
        self.count += 1
        self.bytes += ticket.size

    def head(self) -> Ticket | None:
        heap = self.heap
        while heap and heap[0][1].state is not State.QUEUED:
            heapq.heappop(heap)  # left already (dispatched, expired, cancelled)
        return heap[0][1] if heap else None

    def head_key(self) -> tuple | None:
        return self.heap[0][0] if self.head() is not None else None

    def pop(self) -> Ticket:
        ticket = self.head()
        assert ticket is not None
        heapq.heappop(self.heap)
        return ticket

    def removed(self, ticket: Ticket) -> None:
        """Account a ticket that left without being popped (its heap entry goes lazily)."""
        self.count -= 1
        self.bytes -= ticket.size
        if self.count == 0:
            self.heap.clear()
        elif len(self.heap) > 64 and len(self.heap) > 4 * self.count:
            self.heap = [e for e in self.heap if e[1].state is State.QUEUED]
            heapq.heapify(self.heap)


@dataclass(eq=False)
class Band:
    priority: int
    max_bytes: int  # 0 = unlimited
    max_requests: int  # 0 = unlimited
    fairness: FairnessPolicy
    ordering: OrderingPolicy
    dynamic: bool = False  # made for a priority no band was configured for
    flows: dict[str, FlowQueue] = field(default_factory=dict)
    flow_ids: list[str] = field(default_factory=list)  # sorted: round-robin's deterministic order
    count: int = 0
    bytes: int = 0
    last_active: float = 0.0
    cursor: str | None = None  # round-robin: the flow served last

    def queue(self, flow_id: str, now: float) -> FlowQueue:
        q = self.flows.get(flow_id)
        if q is None:
            q = self.flows[flow_id] = FlowQueue(flow_id, self, now)
            bisect.insort(self.flow_ids, flow_id)
        return q

    def drop_flow(self, flow_id: str) -> None:
        del self.flows[flow_id]
        i = bisect.bisect_left(self.flow_ids, flow_id)
        if i < len(self.flow_ids) and self.flow_ids[i] == flow_id:
            del self.flow_ids[i]


class Registry:
    """Bands by priority, highest first, and the global totals."""

    def __init__(self, bands: list[Band], template, negative_template=None) -> None:
        self.bands: list[Band] = sorted(bands, key=lambda b: -b.priority)
        self.by_priority: dict[int, Band] = {b.priority: b for b in self.bands}
        self.template = template  # callable(priority) -> Band for an unseen priority
        self.negative_template = negative_template or template
        self.count = 0
        self.bytes = 0

    def band(self, priority: int, now: float) -> Band:
        b = self.by_priority.get(priority)
        if b is None:
            b = (self.negative_template if priority < 0 else self.template)(priority)
            b.dynamic = True
            b.last_active = now
            self.by_priority[priority] = b
            bisect.insort(self.bands, b, key=lambda x: -x.priority)
        return b

    def add(self, ticket: Ticket, band: Band, key: tuple, now: float) -> None:
        q = band.queue(ticket.flow_id, now)
        q.push(ticket, key)
        q.last_active = band.last_active = now
        ticket.band, ticket.queue, ticket.state = band, q, State.QUEUED
        band.count += 1
        band.bytes += ticket.size
        self.count += 1
        self.bytes += ticket.size

    def remove(self, ticket: Ticket) -> None:
        """Take a queued ticket out (dispatch pops it first; expiry and cancel do not)."""
        q, band = ticket.queue, ticket.band
        assert q is not None and band is not None
        ticket.state = State.NEW
        q.removed(ticket)
        band.count -= 1
        band.bytes -= ticket.size
        self.count -= 1
        self.bytes -= ticket.size

    def collect(self, now: float, flow_idle: float, band_idle: float) -> None:
        """Forget flows idle for `flow_idle` s and dynamic bands idle for `band_idle` s."""
        for band in list(self.bands):
            for fid, q in list(band.flows.items()):
                if q.count == 0 and now - q.last_active >= flow_idle:
                    band.drop_flow(fid)
            if band.dynamic and band.count == 0 and not band.flows and now - band.last_active >= band_idle:
                self.bands.remove(band)
                del self.by_priority[band.priority]

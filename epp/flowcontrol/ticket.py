"""One request's place in the waiting room, and how its wait ended (exactly once)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from epp.errors import EppError

if TYPE_CHECKING:
    from epp.flowcontrol.prefill_gate import PrefillGate
    from epp.flowcontrol.registry import Band, FlowQueue


class Outcome(str, Enum):
    """Reference outcome names (metric label `outcome`)."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
    REJECTED_OTHER = "RejectedOther"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"
    EVICTED_CONTEXT_CANCELLED = "EvictedContextCancelled"
    EVICTED_OTHER = "EvictedOther"


class State(Enum):
    NEW = 0
    QUEUED = 1  # in a band's flow queue: waits for the pool to have room
    PARKED = 2  # dispatched, but the prefill gate keeps it until a long prefill ends
    DONE = 3  # routed, failed or evicted: nothing of it is left in the waiting room


class Waiter(Protocol):
    """What waits: the director's exchange. Flow control never sees gRPC or HTTP."""

    def try_dispatch(self) -> bool:
        """Schedule now. True when the wait is over (routed, or failed with an error it keeps);
        False when the prefill gate parks it."""
        ...

    def evicted(self, err: EppError) -> None:
        """The wait ended without a route: answer the client with `err`."""
        ...


@dataclass(slots=True, eq=False)
class Ticket:
    waiter: Waiter
    flow_id: str
    priority: int
    size: int  # request body bytes (maxBytes, queue_bytes)
    tokens: int  # prompt tokens, estimated (token fairness charges them at dispatch)
    enqueued: float  # monotonic
    seq: int
    slo_deadline: float = float("inf")  # slo-deadline-ordering-policy
    state: State = State.NEW
    outcome: Outcome | None = None
    band: Band | None = None
    queue: FlowQueue | None = None
    regime_since: float = 0.0  # when its TTL budget started (restarts when the pool empties or fills)
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Future[None] | None = None
    labels: tuple[str, ...] = ()  # metric label values: fairness id, priority, model, target model
    parked_since: float = 0.0
    gate: PrefillGate | None = field(default=None)  # the gate parking it (a type-only import: it imports this module)

    def finalize(self, outcome: Outcome) -> bool:
        """Record how the wait ended; False if it had already ended (a TTL racing a dispatch)."""
        if self.outcome is not None:
            return False
        self.outcome = outcome
        return True

    def wake(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = State.DONE
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

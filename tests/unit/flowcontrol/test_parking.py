"""The prefill gate's parking in the flow controller: who a freed slot wakes, in which order."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint
from epp.errors import EppError
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.prefill_gate import PrefillGate
from epp.flowcontrol.ticket import State
from epp.observability.flowmetrics import FlowMetrics
from epp.scheduling.config import load_config
from epp.scheduling.plugin import build_plugin


def gate(**params) -> PrefillGate:
    g = build_plugin("prefill-gate", "g", params)
    assert isinstance(g, PrefillGate)
    return g


def controller() -> FlowController:
    return FlowController(load_config(None).flow, lambda: [], FlowMetrics(CollectorRegistry(), "p"))


class Waiter:
    """Goes to `goes_to` when tried (taking a long-prefill slot there), or stays parked."""

    def __init__(self, name: str, goes_to: Endpoint | None, log: list[str]) -> None:
        self.name, self.goes_to, self.log = name, goes_to, log
        self.error: EppError | None = None

    def try_dispatch(self) -> bool:
        self.log.append(self.name)
        if self.goes_to is None:
            return False
        self.goes_to.inflight.add(5000, long=True)
        return True

    def evicted(self, err: EppError) -> None:
        self.error = err


async def test_a_release_wakes_the_oldest_that_can_go_then_others_only_while_a_slot_is_free():
    fc, g = controller(), gate(maxPerEndpoint=1, recheck="10s")
    full, free = Endpoint("full", "127.0.0.1", 8000), Endpoint("free", "127.0.0.1", 8001)
    full.inflight.add(5000, long=True)
    calls: list[str] = []
    tickets = [
        fc.park(Waiter(n, to, calls), None, g, float(i))
        for i, (n, to) in enumerate([("a", None), ("b", free), ("c", free), ("d", free)])
    ]
    assert len(fc.parked) == 4
    fc.gate_released([full, free])
    # a cannot go, b takes the free slot; then no endpoint has a free slot: c and d are not tried.
    assert calls == ["a", "b"]
    assert [t.state is State.DONE for t in tickets] == [False, True, False, False]
    assert tickets[1].done.done() and not tickets[2].done.done()
    free.inflight.prefill_done(5000, long=True)  # b's prefill ends: free has a slot again
    calls.clear()
    fc.gate_released([full, free])
    assert calls == ["a", "c"]
    assert [t.state is State.DONE for t in tickets] == [False, True, True, False]
    for t in tickets:
        fc.cancel(t)
    assert fc.parked == [] and all(t.timer is None for t in tickets)


async def test_a_release_lets_several_go_while_slots_stay_free():
    fc, g = controller(), gate(maxPerEndpoint=1, recheck="10s")
    e1, e2 = Endpoint("e1", "127.0.0.1", 8000), Endpoint("e2", "127.0.0.1", 8001)
    order: list[str] = []
    tickets = [
        fc.park(Waiter(n, to, order), None, g, float(i)) for i, (n, to) in enumerate([("x", e1), ("y", e2), ("z", e1)])
    ]
    fc.gate_released([e1, e2])
    assert order == ["x", "y"]  # after x, e2 still had a slot: y went too; then both full, z waits
    assert tickets[0].done.done() and tickets[1].done.done() and not tickets[2].done.done()
    fc.cancel(tickets[2])
    assert fc.parked == []


async def test_a_request_keeps_its_place_when_it_waits_again_after_a_recheck():
    fc, g = controller(), gate(maxPerEndpoint=1, recheck="10s")
    e = Endpoint("e", "127.0.0.1", 8000)
    order: list[str] = []
    young = fc.park(Waiter("young", e, order), None, g, 5.0)
    old = fc.park(Waiter("old", e, order), None, g, 1.0)  # arrived first: parked after a recheck
    fc.park(old.waiter, old, g, 1.0)  # parked again (a recheck that found no room): same place
    fc.gate_released([e])
    assert order == ["old"]  # then e is full: young is not tried
    assert old.done.done() and not young.done.done()
    fc.cancel(young)


async def test_a_parked_request_is_rechecked_on_its_own_timer():
    fc, g = controller(), gate(maxPerEndpoint=1, recheck="20ms", maxWait="10s")
    e = Endpoint("e", "127.0.0.1", 8000)
    order: list[str] = []
    w = Waiter("w", None, order)
    t = fc.park(w, None, g, asyncio.get_running_loop().time())
    await asyncio.sleep(0.1)
    assert len(order) >= 2 and not t.done.done()  # rechecked, still parked
    w.goes_to = e
    await asyncio.wait_for(asyncio.shield(t.done), 1)
    assert fc.parked == [] and fc.metrics.gate_gauge._value.get() == 0


async def test_shutdown_answers_every_parked_request():
    fc, g = controller(), gate(recheck="10s")
    w = Waiter("w", None, [])
    t = fc.park(w, None, g, 0.0)
    fc.close()
    assert t.done.done() and w.error is not None and w.error.http_status == 500

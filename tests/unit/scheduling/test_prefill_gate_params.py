"""prefill-gate decisions and parameters (the waiting itself is tested over gRPC in tests/unit/extproc)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol.prefill_gate import PrefillGate
from epp.scheduling.config import load_config
from epp.scheduling.plugin import ConfigError, build_plugin


def gate(**params) -> PrefillGate:
    g = build_plugin("prefill-gate", "g", params)
    assert isinstance(g, PrefillGate)
    return g


def test_holds_only_long_uncached_prompts_beyond_the_per_endpoint_limit_until_max_wait():
    g = gate(minTokens=1000, maxPerEndpoint=2, maxWait="5s")
    e = Endpoint("a", "127.0.0.1", 8000)
    e.inflight.add(5000, long=True)
    assert not g.holds(e, 5000, waited=0.0, choices=8)  # one outstanding, two allowed
    e.inflight.add(5000, long=True)
    assert g.holds(e, 5000, waited=0.0, choices=8)
    assert g.holds(e, 1000, waited=4.9, choices=8)
    assert not g.holds(e, 999, waited=0.0, choices=8)  # short prompts always go
    assert not g.holds(e, 5000, waited=5.0, choices=8)  # waited long enough: sent anyway
    assert not g.holds(e, 5000, waited=0.0, choices=1)  # nowhere else to go: the server queues it
    e.inflight.prefill_done(5000, long=True)
    assert not g.holds(e, 5000, waited=0.0, choices=8)
    e.inflight.release(5000, prefill_pending=True, long=True)
    assert e.inflight.long_prefills == 0 and e.inflight.prefill_tokens == 0


def test_defaults_and_durations():
    g = gate()
    assert (g.min_tokens, g.max_per_endpoint, g.max_wait, g.recheck) == (1024, 2, 10.0, 0.25)


@pytest.mark.parametrize("params, word", [({"maxPerEndpoint": 0}, "maxPerEndpoint"),
                                          ({"minTokens": 0}, "minTokens"),
                                          ({"maxWaits": "1s"}, "maxWaits")])
def test_bad_parameters_are_config_errors(params, word):
    with pytest.raises(ConfigError, match=word):
        gate(**params)


def test_bad_duration_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid duration 'ten seconds'"):
        gate(maxWait="ten seconds")
    with pytest.raises(ConfigError, match="invalid duration"):  # the same for the reference's filter
        build_plugin("utilization-detector", "u", {"metricsStalenessThreshold": "soon"})


def test_the_default_config_has_the_gate():
    assert len(load_config(None).plugins_of(PrefillGate)) == 1


async def test_a_release_wakes_the_oldest_that_can_go_then_others_only_while_a_slot_is_free():
    g = gate(maxPerEndpoint=1, recheck="10s")
    arrivals = itertools.count()
    full, free = Endpoint("full", "127.0.0.1", 8000), Endpoint("free", "127.0.0.1", 8001)
    full.inflight.add(5000, long=True)
    calls: list[str] = []

    def waiter(name: str, goes_to: Endpoint | None):
        def retry() -> bool:
            calls.append(name)
            if goes_to is None:
                return False
            goes_to.inflight.add(5000, long=True)
            return True
        return asyncio.ensure_future(g.wait(retry, next(arrivals), 0.0))

    tasks = [waiter("a", None), waiter("b", free), waiter("c", free), waiter("d", free)]
    await asyncio.sleep(0)
    assert g.waiting == 4
    g.released([full, free])
    # a cannot go, b takes the free slot; then no endpoint has a free slot: c and d are not tried.
    assert calls == ["a", "b"]
    await asyncio.wait_for(tasks[1], 1)
    assert [t.done() for t in tasks] == [False, True, False, False]
    free.inflight.prefill_done(5000, long=True)  # b's prefill ends: free has a slot again
    calls.clear()
    g.released([full, free])
    assert calls == ["a", "c"]
    await asyncio.wait_for(tasks[2], 1)
    assert [t.done() for t in tasks] == [False, True, True, False]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert g.waiting == 0


async def test_a_release_lets_several_go_while_slots_stay_free():
    g = gate(maxPerEndpoint=1, recheck="10s")
    arrivals = itertools.count()
    e1, e2 = Endpoint("e1", "127.0.0.1", 8000), Endpoint("e2", "127.0.0.1", 8001)
    order: list[str] = []

    def waiter(name: str, goes_to: Endpoint):
        def retry() -> bool:
            order.append(name)
            goes_to.inflight.add(5000, long=True)
            return True
        return asyncio.ensure_future(g.wait(retry, next(arrivals), 0.0))

    tasks = [waiter("x", e1), waiter("y", e2), waiter("z", e1)]
    await asyncio.sleep(0)
    g.released([e1, e2])
    assert order == ["x", "y"]  # after x, e2 still had a slot: y went too; then both full, z waits
    await asyncio.wait_for(asyncio.gather(tasks[0], tasks[1]), 1)
    assert not tasks[2].done()
    tasks[2].cancel()
    await asyncio.gather(tasks[2], return_exceptions=True)


async def test_a_request_keeps_its_place_when_it_waits_again_after_a_recheck():
    g = gate(maxPerEndpoint=1, recheck="10s")
    e = Endpoint("e", "127.0.0.1", 8000)
    order: list[str] = []

    def retry(name: str):
        def go() -> bool:
            order.append(name)
            if name == "old":
                e.inflight.add(5000, long=True)  # it goes, and takes the only slot
            return name == "old"
        return go

    young = asyncio.ensure_future(g.wait(retry("young"), 5.0, 0.0))
    old = asyncio.ensure_future(g.wait(retry("old"), 1.0, 4.0))  # arrived first, back after a recheck
    await asyncio.sleep(0)
    g.released([e])
    assert order == ["old"]
    await asyncio.wait_for(old, 1)
    young.cancel()
    await asyncio.gather(young, return_exceptions=True)

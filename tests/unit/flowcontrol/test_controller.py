"""The flow controller's rules, as the reference's tests pin them (flowcontrol.md §5), with real
policies and a real detector over endpoints whose load the test sets."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from epp.datalayer.endpoint import Endpoint
from epp.errors import EppError
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.ticket import Outcome, State, Ticket
from epp.observability.flowmetrics import FlowMetrics
from epp.scheduling.config import load_config

GIE = "inference.networking.x-k8s.io/v1alpha1"
LLMD = "llm-d.ai/v1alpha1"


def config(flow: str = "", plugins: str = "", api: str = GIE, detector: str = "concurrency-detector") -> str:
    # concurrency-detector with maxConcurrency 1: saturation = in-flight requests / endpoints.
    return f"""
apiVersion: {api}
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {{maxConcurrency: 1}}
- type: queue-scorer
{plugins}
saturationDetector: {{pluginRef: {detector}}}
flowControl:
{flow or "  defaultRequestTTL: 0s"}
"""


class Pool:
    def __init__(self, n: int) -> None:
        self.eps = [Endpoint(f"e{i}", "127.0.0.1", 8000 + i) for i in range(n)]

    def __call__(self):
        return tuple(self.eps)


class Req:
    """A request as the director is to the controller: routing takes a slot on the pool."""

    def __init__(self, pool: Pool, log: list[str], name: str) -> None:
        self.pool, self.log, self.name = pool, log, name
        self.error: EppError | None = None
        self.endpoint: Endpoint | None = None

    def try_dispatch(self) -> bool:
        self.log.append(self.name)
        if self.pool.eps:
            self.endpoint = min(self.pool.eps, key=lambda e: e.inflight.requests)
            self.endpoint.inflight.add(10)
        return True

    def evicted(self, err: EppError) -> None:
        self.error = err

    def finish(self, fc: FlowController) -> None:
        assert self.endpoint is not None
        self.endpoint.inflight.release(10, prefill_pending=True)
        fc.kick()


def make(text: str, pool: Pool) -> tuple[FlowController, FlowMetrics]:
    cfg = load_config(text)
    m = FlowMetrics(CollectorRegistry(), "pool")
    return FlowController(cfg.flow, pool, m), m


def submit(fc, pool, log, name, priority=0, flow="f", size=100, headers=None) -> tuple[Ticket, Req]:
    r = Req(pool, log, name)
    t = fc.submit(r, flow, priority, size, 10, headers or {}, "m", "m")
    if t.outcome is Outcome.DISPATCHED and t.done is None:
        r.try_dispatch()  # the fast path: the director schedules it itself
    return t, r


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_go_at_once_while_the_pool_has_room_and_queue_when_it_is_full():
    pool, log = Pool(2), []
    fc, _ = make(config(), pool)
    a, _ = submit(fc, pool, log, "a")
    b, _ = submit(fc, pool, log, "b")
    assert a.outcome is b.outcome is Outcome.DISPATCHED and log == ["a", "b"]
    c, _rc = submit(fc, pool, log, "c")  # 2 in flight on 2 endpoints: saturation 1.0
    assert c.state is State.QUEUED and fc.queued == 1 and fc.last_saturation == 1.0
    await settle()
    assert c.state is State.QUEUED  # kicks change nothing while it stays full
    pool.eps[0].inflight.release(10, prefill_pending=True)
    fc.kick()
    await settle()
    assert c.outcome is Outcome.DISPATCHED and c.done.done() and log == ["a", "b", "c"] and fc.queued == 0


async def test_strict_priority_a_freed_slot_goes_to_the_higher_band_and_lower_bands_starve():
    pool, log = Pool(1), []
    fc, _ = make(config(), pool)
    submit(fc, pool, log, "busy")
    lows = [submit(fc, pool, log, f"low{i}", priority=-1)[0] for i in range(3)]
    [submit(fc, pool, log, f"high{i}", priority=10)[0] for i in range(2)]
    assert fc.queued == 5
    for _i in range(2):
        pool.eps[0].inflight.release(10, prefill_pending=True)
        fc.kick()
        await settle()
    assert log == ["busy", "high0", "high1"]  # both highs first, in order, the lows wait
    assert all(t.state is State.QUEUED for t in lows)
    pool.eps[0].inflight.release(10, prefill_pending=True)
    fc.kick()
    await settle()
    assert log[-1] == "low0"


async def test_an_arrival_does_not_overtake_requests_waiting_in_its_band():
    pool, log = Pool(1), []
    fc, _ = make(config(), pool)
    submit(fc, pool, log, "busy")
    _first, _ = submit(fc, pool, log, "first")
    pool.eps[0].inflight.release(10, prefill_pending=True)  # room, but no kick yet
    second, _ = submit(fc, pool, log, "second")
    assert second.state is State.QUEUED  # "first" is waiting in its band: the newcomer queues behind
    await settle()
    assert log == ["busy", "first"] and second.state is State.QUEUED


async def test_a_pass_dispatches_as_many_as_fit_rereading_saturation_each_time():
    pool, log = Pool(4), []
    fc, _ = make(config(), pool)
    busy = [submit(fc, pool, log, f"busy{i}")[1] for i in range(4)]
    waiting = [submit(fc, pool, log, f"w{i}")[0] for i in range(6)]
    for r in busy[:3]:
        r.endpoint.inflight.release(10, prefill_pending=True)
    fc.kick()
    await settle()
    assert sum(t.outcome is Outcome.DISPATCHED for t in waiting) == 3  # exactly the 3 free slots
    assert fc.dispatched == 3 and fc.queued == 3


@pytest.mark.parametrize(
    "flow, sizes, accepted",
    [
        ("  maxRequests: 2", [1, 1, 1], 2),  # global count: at the cap allowed, one over denied
        ("  maxBytes: 300", [100, 200, 1], 2),  # global bytes: 300 exactly fits
        ("  priorityBands: [{priority: 0, maxRequests: 1}]", [1, 1], 1),  # band count
        ("  priorityBands: [{priority: 0, maxBytes: 1k}]", [600, 400, 1], 2),  # band bytes, quantity
        ("  maxRequests: 0\n  maxBytes: 0", [10**6] * 5, 5),  # 0 = unlimited
        ("  maxRequests: 5\n  priorityBands: [{priority: 0, maxRequests: 2}]", [1, 1, 1], 2),  # tighter wins
    ],
)
async def test_capacity_limits_at_their_boundaries(flow, sizes, accepted):
    pool, log = Pool(1), []
    fc, _m = make(config(flow), pool)
    submit(fc, pool, log, "busy", size=1)
    got, errors = 0, []
    for i, size in enumerate(sizes):
        try:
            t, _ = submit(fc, pool, log, f"r{i}", size=size)
            got += t.state is State.QUEUED
        except EppError as err:
            errors.append(err)
    assert got == accepted and len(errors) == len(sizes) - accepted
    for err in errors:
        assert err.http_status == 429 and err.message == "request rejected pre-queue: queue at capacity"


async def test_a_request_that_leaves_frees_its_capacity_at_once():
    pool, log = Pool(1), []
    fc, _ = make(config("  maxRequests: 1"), pool)
    submit(fc, pool, log, "busy")
    t, _ = submit(fc, pool, log, "a")
    with pytest.raises(EppError):
        submit(fc, pool, log, "b")
    fc.cancel(t)  # the client went away: no zombie holds its place until a sweep
    t2, _ = submit(fc, pool, log, "c")
    assert t.outcome is Outcome.EVICTED_CONTEXT_CANCELLED and t2.state is State.QUEUED


async def test_ttl_eviction_answers_503_in_gie_and_429_in_llmd_and_leaves_nothing():
    for api, status in ((GIE, 503), (LLMD, 429)):
        pool, log = Pool(1), []
        fc, m = make(config("  defaultRequestTTL: 50ms", api=api), pool)
        submit(fc, pool, log, "busy")
        t, r = submit(fc, pool, log, "late")
        await asyncio.wait_for(asyncio.shield(t.done), 2)
        assert t.outcome is Outcome.EVICTED_TTL and r.error.http_status == status
        assert r.error.message == "request timed out in queue: request evicted from queue: request TTL expired"
        assert fc.queued == 0 and fc.registry.bytes == 0 and log == ["busy"]
        assert m.queued_gauge._value.get() == 0


async def test_finalisation_is_exactly_once_when_a_ttl_and_a_dispatch_race():
    pool, log = Pool(1), []
    fc, m = make(config("  defaultRequestTTL: 30ms"), pool)
    busy = submit(fc, pool, log, "busy")[1]
    t, r = submit(fc, pool, log, "racer")
    await asyncio.sleep(0.025)
    busy.finish(fc)  # room just before the TTL: the pass and the timer land close together
    await asyncio.sleep(0.05)
    assert t.outcome is Outcome.DISPATCHED and r.error is None and log == ["busy", "racer"]
    assert not t.finalize(Outcome.EVICTED_TTL) and t.outcome is Outcome.DISPATCHED
    fc.cancel(t)  # a late disconnect of a dispatched request changes nothing here
    assert t.outcome is Outcome.DISPATCHED and fc.queued == 0
    outcomes = m.requests.metrics[0]
    assert outcomes.labels("Dispatched", "0", "pool")._value.get() == 2
    assert outcomes.labels("EvictedTTL", "0", "pool")._value.get() == 0


async def test_a_disconnected_client_is_evicted_and_its_queue_metrics_return_to_zero():
    pool, log = Pool(1), []
    fc, m = make(config(), pool)
    submit(fc, pool, log, "busy")
    t, _ = submit(fc, pool, log, "gone", size=1234)
    size_g, bytes_g = m.queue(t.labels)
    assert size_g.children[0]._value.get() == 1 and bytes_g.children[0]._value.get() == 1234
    fc.cancel(t)
    assert t.outcome is Outcome.EVICTED_CONTEXT_CANCELLED and t.done.done()
    assert size_g.children[0]._value.get() == 0 and bytes_g.children[0]._value.get() == 0
    assert size_g.children[1]._value.get() == 0


async def test_scale_from_zero_requests_wait_for_an_endpoint_then_go():
    pool, log = Pool(0), []
    fc, _ = make(config("  defaultRequestTTL: 5s"), pool)
    tickets = [submit(fc, pool, log, f"r{i}")[0] for i in range(3)]
    assert all(t.state is State.QUEUED for t in tickets) and fc.last_saturation == 1.0
    pool.eps = [Endpoint(f"n{i}", "127.0.0.1", 9000 + i) for i in range(3)]
    fc.kick()  # the datastore's on_add does this
    await settle()
    assert all(t.outcome is Outcome.DISPATCHED for t in tickets) and len(log) == 3


async def test_the_no_endpoint_budget_ends_the_wait_with_503_and_restarts_when_endpoints_appear():
    pool, log = Pool(0), []
    fc, _ = make(config("  defaultRequestTTL: 300ms\n  noEndpointRequestTTL: 60ms", api=LLMD), pool)
    t, r = submit(fc, pool, log, "cold")
    await asyncio.wait_for(asyncio.shield(t.done), 2)
    assert t.outcome is Outcome.EVICTED_NO_ENDPOINTS and r.error.http_status == 503
    assert "no endpoints are available" in r.error.message
    # A request that waits through a cold start gets a fresh saturation budget once endpoints come.
    t2, r2 = submit(fc, pool, log, "warm")
    await asyncio.sleep(0.04)
    pool.eps = [Endpoint("n0", "127.0.0.1", 9000)]
    pool.eps[0].inflight.add(10)  # present but busy: it keeps waiting, now on the 300 ms budget
    fc.kick()
    await asyncio.sleep(0.1)  # past the 60 ms no-endpoint budget counted from enqueue
    assert t2.state is State.QUEUED
    await asyncio.wait_for(asyncio.shield(t2.done), 2)
    assert t2.outcome is Outcome.EVICTED_TTL and r2.error.http_status == 429


async def test_capacity_while_the_pool_is_empty_is_503_no_endpoints_in_llmd():
    pool, log = Pool(0), []
    fc, _ = make(config("  maxRequests: 1", api=LLMD), pool)
    submit(fc, pool, log, "a")
    with pytest.raises(EppError) as exc:
        submit(fc, pool, log, "b")
    assert exc.value.http_status == 503 and exc.value.message.startswith("no endpoints available")


async def test_unseen_priorities_get_a_dynamic_band_from_the_template_ordered_among_the_others():
    pool, log = Pool(1), []
    fc, _ = make(config("  defaultPriorityBand: {maxRequests: 1}\n  priorityBands: [{priority: 5}]"), pool)
    submit(fc, pool, log, "busy", priority=5)
    submit(fc, pool, log, "p7", priority=7)
    submit(fc, pool, log, "p-3", priority=-3)
    assert [b.priority for b in fc.registry.bands] == [7, 5, -3]
    assert fc.registry.by_priority[7].dynamic and not fc.registry.by_priority[5].dynamic
    assert fc.registry.by_priority[7].max_requests == 1
    with pytest.raises(EppError):
        submit(fc, pool, log, "p7b", priority=7)  # the template's limit applies to the new band


async def test_priority_holdback_lets_the_top_band_use_headroom_the_lower_one_may_not():
    plugins = "- type: priority-holdback-policy\n  parameters: {minCeiling: 0.5}"
    flow = "  usageLimitPolicyPluginRef: priority-holdback-policy\n  priorityBands: [{priority: 10}, {priority: 0}]"
    pool, log = Pool(4), []
    fc, _ = make(config(flow, plugins), pool)
    for i in range(2):
        submit(fc, pool, log, f"b{i}")  # 0/4, 1/4 in flight: below 0.5, band 0 goes
    low, _ = submit(fc, pool, log, "low")  # 2/4 = 0.5: band 0 is at its ceiling
    high, _ = submit(fc, pool, log, "high", priority=10)  # band 10's ceiling is 1.0: it goes
    assert low.state is State.QUEUED and high.outcome is Outcome.DISPATCHED
    await settle()
    assert low.state is State.QUEUED  # the waiting low band did not stall the high one, nor go itself


async def test_fairness_round_robin_alternates_flows_inside_a_band():
    plugins = "- type: round-robin-fairness-policy"
    pool, log = Pool(1), []
    fc, _ = make(config("  defaultPriorityBand: {fairnessPolicyRef: round-robin-fairness-policy}", plugins), pool)
    busy = submit(fc, pool, log, "busy")[1]
    reqs = {}
    for i in range(4):
        reqs[f"a{i}"] = submit(fc, pool, log, f"a{i}", flow="tenant-a")[1]
    reqs["b0"] = submit(fc, pool, log, "b0", flow="tenant-b")[1]
    reqs["b1"] = submit(fc, pool, log, "b1", flow="tenant-b")[1]
    last = busy
    for _ in range(6):
        last.finish(fc)
        await settle()
        last = reqs[log[-1]]
    assert log[1:] == ["a0", "b0", "a1", "b1", "a2", "a3"]


async def test_without_fairness_the_band_is_one_fcfs_queue():
    pool, log = Pool(1), []
    fc, _ = make(config(), pool)
    busy = submit(fc, pool, log, "busy")[1]
    reqs = {}
    for name, flow in [("a0", "a"), ("a1", "a"), ("b0", "b"), ("a2", "a")]:
        reqs[name] = submit(fc, pool, log, name, flow=flow)[1]
    last = busy
    for _ in range(4):
        last.finish(fc)
        await settle()
        last = reqs[log[-1]]
    assert log[1:] == ["a0", "a1", "b0", "a2"]


async def test_token_fairness_serves_the_flow_that_has_been_served_least():
    plugins = "- type: program-aware-fairness\n  parameters: {lasWeightHeadWait: 0}"
    pool, log = Pool(1), []
    fc, _ = make(config("  defaultPriorityBand: {fairnessPolicyRef: program-aware-fairness}", plugins), pool)
    busy = submit(fc, pool, log, "busy", flow="heavy")[1]
    policy = fc.registry.bands[0].fairness
    # "heavy" has been served 10,000 tokens (5,000 output tokens, weighted 2), "light" nothing yet.
    policy.served("heavy", 0, 5000, time.monotonic())
    reqs = {n: submit(fc, pool, log, n, flow=f)[1] for n, f in [("h1", "heavy"), ("h2", "heavy"), ("l1", "light")]}
    busy.finish(fc)
    await settle()
    assert log[-1] == "l1"  # queued last, served first: least attained service
    reqs["l1"].finish(fc)
    await settle()
    assert log[-1] == "h1"  # light is now charged its prompt; still only heavy waits


async def test_slo_deadline_ordering_serves_the_tightest_objective_first():
    plugins = "- type: slo-deadline-ordering-policy"
    pool, log = Pool(1), []
    fc, _ = make(config("  defaultPriorityBand: {orderingPolicyRef: slo-deadline-ordering-policy}", plugins), pool)
    busy = submit(fc, pool, log, "busy")[1]
    reqs = {}
    for name, h in [
        ("none", {}),
        ("slow", {"x-slo-ttft-ms": "5000"}),
        ("bad", {"x-slo-ttft-ms": "soon"}),
        ("fast", {"x-llm-d-slo-ttft-ms": "100"}),
    ]:
        reqs[name] = submit(fc, pool, log, name, headers=h)[1]
    last = busy
    for _ in range(4):
        last.finish(fc)
        await settle()
        last = reqs[log[-1]]
    assert log[1:] == ["fast", "slow", "none", "bad"]  # no or invalid header: far future, then FCFS


async def test_shutdown_answers_every_queued_request_and_refuses_new_ones():
    pool, log = Pool(1), []
    fc, _ = make(config(), pool)
    submit(fc, pool, log, "busy")
    t, r = submit(fc, pool, log, "q")
    fc.close()
    assert t.outcome is Outcome.EVICTED_OTHER and r.error.http_status == 500 and fc.queued == 0
    with pytest.raises(EppError):
        submit(fc, pool, log, "after")


async def test_arrivals_reuse_a_reading_only_while_it_surely_stays_below_the_ceiling():
    pool, log = Pool(10), []
    fc, _ = make(config(), pool)  # maxConcurrency 1 per endpoint: each pick adds 0.1

    class Counting:
        def __init__(self, inner):
            self.inner, self.reads = inner, 0

        def saturation(self, eps, now=None, backlog=False):
            self.reads += 1
            return self.inner.saturation(eps, now, backlog)

        def step(self, n):
            return self.inner.step(n)

    fc.detector = counting = Counting(fc.detector)
    tickets = [submit(fc, pool, log, f"r{i}")[0] for i in range(12)]
    # Read at 0.0; the next 8 ride that reading (0.0 + k * 0.1 < 1.0); the 10th cannot be sure,
    # reads 0.9 and goes; the 11th reads 1.0 and waits; the 12th queues behind it unread.
    assert [t.outcome is Outcome.DISPATCHED for t in tickets] == [True] * 10 + [False] * 2
    assert counting.reads == 3
    pool.eps[0].inflight.release(10, prefill_pending=True)
    fc.kick()  # a change in the pool drops the reading
    await settle()
    assert tickets[10].outcome is Outcome.DISPATCHED and tickets[11].state is State.QUEUED


UTILIZATION = f"""
apiVersion: {GIE}
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: utilization-detector
  parameters: {{queueDepthThreshold: 5}}
- type: queue-scorer
saturationDetector: {{pluginRef: utilization-detector}}
flowControl: {{defaultRequestTTL: 0s}}
"""


def page(pool: Pool, waiting: int) -> None:
    """A scraped page for every endpoint, fresh now, that has seen every pick so far."""
    for e in pool.eps:
        e.metrics.waiting_queue_size, e.metrics.update_time = waiting, time.monotonic() + 60
        e.metrics.picks_seen = e.inflight.picks


async def test_arrivals_go_by_the_page_and_a_backlog_goes_out_by_the_page_plus_unseen_picks():
    pool, log = Pool(1), []
    fc, _ = make(UTILIZATION, pool)
    page(pool, waiting=0)
    # A fast server answering short requests: twelve sent since the page, none answered yet. The
    # page shows no queue, so none of them waits in the EPP (the reference's reading).
    fast = [submit(fc, pool, log, f"a{i}")[0] for i in range(12)]
    assert all(t.outcome is Outcome.DISPATCHED for t in fast) and fc.queued == 0
    assert pool.eps[0].inflight.prefill_requests == 12
    # The next page shows a real queue: arrivals wait.
    page(pool, waiting=5)
    for _ in range(12):
        pool.eps[0].inflight.prefill_done(10)
    held = [submit(fc, pool, log, f"q{i}") for i in range(3)]
    assert all(t.state is State.QUEUED for t, _ in held) and fc.queued == 3
    # The queue drains on the server (a page with nothing waiting): the backlog goes out one
    # request per free place, counting its own picks the page cannot show yet.
    page(pool, waiting=3)
    fc.kick()
    await settle()
    assert fc.queued == 1  # (3 + 0) / 5 and (3 + 1) / 5 go, (3 + 2) / 5 = 1.0 stops
    assert [t.state for t, _ in held] == [State.DONE, State.DONE, State.QUEUED]
    # One of them starts answering: its place is free, the last one goes.
    pool.eps[0].inflight.prefill_done(10)
    fc.kick()
    await settle()
    assert fc.queued == 0 and held[2][0].outcome is Outcome.DISPATCHED

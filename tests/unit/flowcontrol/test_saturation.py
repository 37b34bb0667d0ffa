"""The saturation detectors' arithmetic, including requests sent since the last scraped page."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol.saturation import ConcurrencyDetector, UtilizationDetector, unseen_picks


def endpoint(waiting: int = 0, kv: float = 0.0, at: float = 100.0) -> Endpoint:
    e = Endpoint("e", "127.0.0.1", 8000)
    e.metrics.waiting_queue_size, e.metrics.kv_cache_usage_percent, e.metrics.update_time = waiting, kv, at
    return e


def test_utilization_is_the_mean_of_each_endpoints_worse_ratio_and_stale_counts_as_full():
    d = UtilizationDetector(queue_depth_threshold=5, kv_cache_util_threshold=0.8, staleness=0.2)
    a, b, stale = endpoint(waiting=5), endpoint(kv=0.4), endpoint(at=99.0)
    assert d.saturation([a], now=100.1) == 1.0
    assert d.saturation([b], now=100.1) == pytest.approx(0.5)
    assert d.saturation([a, b, stale], now=100.1) == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert d.saturation([], now=100.1) == 1.0  # an empty pool is saturated: requests wait for one


def test_while_a_backlog_is_dispatched_requests_sent_after_the_page_count_as_queued_until_their_first_byte():
    e = endpoint(waiting=1)
    e.metrics.picks_seen = e.inflight.picks
    for _ in range(3):
        e.inflight.add(100)
    assert unseen_picks(e) == 3
    e.inflight.prefill_done(100)  # one started answering: it is in no queue any more
    assert unseen_picks(e) == 2
    counting = UtilizationDetector(queue_depth_threshold=2, staleness=1.0, count_unseen=True)
    reference = UtilizationDetector(queue_depth_threshold=2, staleness=1.0)
    assert counting.saturation([e], now=100.1, backlog=True) == pytest.approx(1.5)  # (1 + 2) / 2
    assert reference.saturation([e], now=100.1, backlog=True) == pytest.approx(0.5)
    # A new arrival with nobody waiting is judged by the page, as the reference judges it.
    assert counting.saturation([e], now=100.1) == pytest.approx(0.5)
    e.metrics.picks_seen = e.inflight.picks  # the next page includes them
    assert counting.saturation([e], now=100.1, backlog=True) == pytest.approx(0.5)


def test_concurrency_in_requests_and_in_tokens():
    a, b = endpoint(), endpoint()
    for _ in range(3):
        a.inflight.add(1000)
    assert ConcurrencyDetector(max_concurrency=2).saturation([a, b]) == pytest.approx(0.75)
    assert ConcurrencyDetector("tokens", max_token_concurrency=2000).saturation([a, b]) == pytest.approx(0.75)
    assert ConcurrencyDetector().saturation([]) == 1.0


def test_under_flow_control_a_server_without_a_page_is_judged_by_its_own_counts_unless_it_is_down():
    fc = UtilizationDetector(queue_depth_threshold=2, staleness=0.2, count_unseen=True)
    never = Endpoint("n", "127.0.0.1", 8000)  # not scraped yet
    assert fc.saturation([never], now=100.0) == 0.0
    never.inflight.add(10)
    assert fc.saturation([never], now=100.0) == pytest.approx(0.5)
    assert UtilizationDetector().saturation([never], now=100.0) == 1.0  # the reference: stale = full
    never.reach.scrape_failures = 1  # refused: a dead server is full...
    alive = endpoint(at=100.0)
    assert fc.saturation([never, alive], now=100.0) == pytest.approx(0.5)
    # ...unless no server answers: then the monitoring is what failed; judge by our counts.
    assert fc.saturation([never], now=100.0) == pytest.approx(0.5)

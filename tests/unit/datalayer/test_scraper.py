"""The scrape loops against real HTTP servers on 127.0.0.1: MetricsCollector (inline, each
HTTP backend) and ProcessCollector (a real scrape child process), held to the same behaviour.

No assertion depends on timing: every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.scrapeprocess import ProcessCollector
from epp.datalayer.scraper import CollectorBase, MetricsCollector
from epp.datalayer.vllmpage import VllmState, vllm_page

from .conftest import wait_until

INTERVAL = 0.02


def _page(**kw) -> bytes:
    return vllm_page(VllmState(**kw)).encode()


def _ep(port: int, engine: str = "vllm") -> Endpoint:
    return Endpoint(name=f"127.0.0.1:{port}", address="127.0.0.1", port=port, engine=engine)


@pytest.fixture(params=["aiohttp", "httpx", "process"])
async def collector_factory(request):
    made: list[CollectorBase] = []

    async def make(ds: Datastore, timeout: float = 1.0) -> CollectorBase:
        c: CollectorBase
        if request.param == "process":
            c = ProcessCollector(ds, interval=INTERVAL, timeout=timeout)
        else:
            c = MetricsCollector(ds, interval=INTERVAL, timeout=timeout, backend=request.param)
        await c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        await c.stop()


async def test_picks_up_changed_values(metrics_server_factory, collector_factory):
    server = await metrics_server_factory(_page(waiting=1, running=2, kv_usage=0.1))
    ds = Datastore()
    ep = ds.upsert(_ep(server.port))
    collector = await collector_factory(ds)
    await wait_until(lambda: ep.metrics.waiting_queue_size == 1)
    first = ep.metrics
    assert (first.running_requests_size, first.kv_cache_usage_percent, first.cache_block_size) == (2, 0.1, 16)
    assert first.update_time > 0
    server.body = _page(waiting=9, running=3, kv_usage=0.9, running_lora="l1")
    await wait_until(lambda: ep.metrics.waiting_queue_size == 9)
    m = ep.metrics
    assert (m.running_requests_size, m.kv_cache_usage_percent, m.active_models) == (3, 0.9, frozenset({"l1"}))
    assert m.update_time > first.update_time
    assert first.waiting_queue_size == 1  # readers holding the old snapshot see it unchanged
    stats = collector.stats()[ep.name]
    assert stats.ok >= 2 and stats.failed == 0 and stats.last_duration > 0


async def test_removed_endpoint_stops_being_scraped(metrics_server_factory, collector_factory):
    server = await metrics_server_factory(_page())
    ds = Datastore()
    ds.upsert(_ep(server.port))
    collector = await collector_factory(ds)
    await wait_until(lambda: server.hits >= 3)
    ds.remove(f"127.0.0.1:{server.port}")
    await wait_until(lambda: collector.scraping() == [])
    assert collector.stats() == {}  # counters of removed endpoints do not pile up
    await asyncio.sleep(3 * INTERVAL)  # let a request already on the wire land
    hits = server.hits
    await asyncio.sleep(10 * INTERVAL)
    assert server.hits == hits


async def test_endpoints_added_later_and_from_another_thread(metrics_server_factory, collector_factory):
    server = await metrics_server_factory(_page(waiting=4))
    ds = Datastore()
    collector = await collector_factory(ds)
    assert collector.scraping() == []
    ep = await asyncio.to_thread(ds.upsert, _ep(server.port))  # sources may run on threads
    await wait_until(lambda: ep.metrics.waiting_queue_size == 4)
    assert threading.current_thread() is threading.main_thread()


async def test_hanging_server_does_not_stall_others(metrics_server_factory, collector_factory):
    hung = await metrics_server_factory(_page())
    hung.mode = "hang"
    good = await metrics_server_factory(_page(waiting=2))
    ds = Datastore()
    hung_ep = ds.upsert(_ep(hung.port))
    good_ep = ds.upsert(_ep(good.port))
    collector = await collector_factory(ds, timeout=0.3)
    await wait_until(lambda: collector.stats()[good_ep.name].ok >= 20)
    await wait_until(lambda: collector.stats()[hung_ep.name].failed >= 1)
    assert hung_ep.metrics.update_time == 0.0
    assert "timeout" in collector.stats()[hung_ep.name].last_error


async def test_slow_server_scrapes_do_not_pile_up(metrics_server_factory, collector_factory):
    slow = await metrics_server_factory(_page(waiting=5))
    slow.mode = "slow"
    slow.slow_seconds = 5 * INTERVAL
    ds = Datastore()
    ep = ds.upsert(_ep(slow.port))
    await collector_factory(ds)
    await wait_until(lambda: slow.hits >= 3)
    assert slow.max_in_flight == 1
    assert ep.metrics.waiting_queue_size == 5


@pytest.mark.parametrize("mode", ["garbage", "error"])
async def test_bad_page_keeps_last_good_metrics(metrics_server_factory, collector_factory, mode):
    server = await metrics_server_factory(_page(waiting=7, kv_usage=0.5))
    ds = Datastore()
    ep = ds.upsert(_ep(server.port))
    collector = await collector_factory(ds)
    await wait_until(lambda: ep.metrics.waiting_queue_size == 7)
    good = ep.metrics
    server.mode = mode
    stats = collector.stats()[ep.name]
    failed = stats.failed
    await wait_until(lambda: stats.failed >= failed + 3)
    assert ep.metrics is good
    assert collector.scraping() == [ep.name]  # the loop survived
    server.mode = "ok"
    server.body = _page(waiting=8)
    await wait_until(lambda: ep.metrics.waiting_queue_size == 8)


async def test_unreachable_endpoint_counts_failures(collector_factory):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    ds = Datastore()
    ep = ds.upsert(_ep(port))
    collector = await collector_factory(ds)
    await wait_until(lambda: collector.stats()[ep.name].failed >= 2)
    assert ep.metrics.update_time == 0.0


async def test_engine_per_endpoint(metrics_server_factory, collector_factory):
    sg = await metrics_server_factory(b"sglang:num_queue_reqs 3\nsglang:num_running_reqs 1\nsglang:token_usage 0.25\n")
    ds = Datastore()
    ep = ds.upsert(_ep(sg.port, engine="sglang"))
    collector = await collector_factory(ds)
    await wait_until(lambda: ep.metrics.waiting_queue_size == 3)
    assert ep.metrics.kv_cache_usage_percent == 0.25
    # cache info is missing: an error for that field, the scrape still counts as ok
    assert collector.stats()[ep.name].ok >= 1 and "cache_config_info" in collector.stats()[ep.name].last_error


@pytest.mark.parametrize("kind", [MetricsCollector, ProcessCollector])
async def test_stop_is_clean_and_idempotent(metrics_server_factory, kind):
    server = await metrics_server_factory(_page())
    ds = Datastore()
    ds.upsert(_ep(server.port))
    c = kind(ds, interval=INTERVAL)
    await c.start()
    await wait_until(lambda: server.hits >= 1)
    await c.stop()
    await c.stop()
    assert c.scraping() == []
    ds.upsert(Endpoint(name="late", address="127.0.0.1", port=server.port))
    assert c.scraping() == []  # unsubscribed: no loop started after stop


def test_rejects_non_positive_interval():
    with pytest.raises(ValueError):
        MetricsCollector(Datastore(), interval=0)


async def test_a_killed_scrape_process_is_replaced_and_scraping_resumes(metrics_server_factory):
    server = await metrics_server_factory(_page(waiting=1))
    ds = Datastore()
    ep = ds.upsert(_ep(server.port))
    c = ProcessCollector(ds, interval=INTERVAL)
    await c.start()
    try:
        await wait_until(lambda: ep.metrics.waiting_queue_size == 1)
        first = c.pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: c.restarts == 1 and c.pid() not in (None, first), timeout=10)
        server.body = _page(waiting=7)  # only a scrape by the new child can bring this in
        await wait_until(lambda: ep.metrics.waiting_queue_size == 7, timeout=10)
        assert c.scraping() == [ep.name]
    finally:
        await c.stop()


async def test_the_scrape_process_ends_by_itself_when_the_epp_side_closes(metrics_server_factory):
    server = await metrics_server_factory(_page())
    ds = Datastore()
    ds.upsert(_ep(server.port))
    c = ProcessCollector(ds, interval=INTERVAL)
    await c.start()
    await wait_until(lambda: server.hits >= 1)
    proc = c._proc
    assert proc is not None
    await c.stop()
    assert proc.returncode == 0  # it saw its socket end and exited: not killed
    hits = server.hits
    await asyncio.sleep(5 * INTERVAL)
    assert server.hits == hits

"""The scrape budget: the per-endpoint interval stretches with the pool so the total scrape
rate stays under a cap. Arithmetic as plain functions; then a real collector against many
real HTTP endpoints, asserting on scrapes counted by the servers (upper bounds only: a slow
machine can scrape less than the schedule, never more)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.scrapebudget import MAX_SCRAPES_PER_SECOND, effective_interval, scrape_rate
from epp.datalayer.scraper import MetricsCollector
from epp.datalayer.vllmpage import VllmState, vllm_page

from .conftest import wait_until


def test_small_pools_keep_the_configured_interval():
    assert effective_interval(0.05, 1, 640) == 0.05
    assert effective_interval(0.05, 32, 640) == 0.05  # 640 scrapes/s: exactly the cap


def test_large_pools_stretch_it_to_the_cap():
    assert effective_interval(0.05, 33, 640) == pytest.approx(33 / 640)
    assert effective_interval(0.05, 1000, 640) == pytest.approx(1.5625)
    for n in (33, 100, 1000, 5000):
        assert scrape_rate(effective_interval(0.05, n, 640), n) == pytest.approx(640)


def test_the_configured_interval_is_a_floor():
    assert effective_interval(2.0, 1000, 640) == 2.0  # 500 scrapes/s: under the cap already


def test_no_cap_and_empty_pool():
    assert effective_interval(0.05, 1000, 0) == 0.05
    assert effective_interval(0.05, 0, 640) == 0.05
    assert scrape_rate(0.05, 0) == 0.0
    with pytest.raises(ValueError):
        effective_interval(0, 10, 640)


def test_default_cap():
    assert MAX_SCRAPES_PER_SECOND == 320  # the figure docs/datalayer.md states
    assert effective_interval(0.05, 16, MAX_SCRAPES_PER_SECOND) == 0.05
    assert effective_interval(0.05, 32, MAX_SCRAPES_PER_SECOND) == pytest.approx(0.1)
    assert effective_interval(0.05, 1000, MAX_SCRAPES_PER_SECOND) == pytest.approx(3.125)


class ManyPorts:
    """One aiohttp app listening on `n` ports of 127.0.0.1, counting scrapes per port."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.hits: dict[int, int] = {}
        self.page = vllm_page(VllmState(waiting=2)).encode()
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1]
        self.hits[port] = self.hits.get(port, 0) + 1
        return web.Response(body=self.page, content_type="text/plain")

    async def start(self) -> list[int]:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        for _ in range(self.n):
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return [addr[1] for addr in self._runner.addresses]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def many_ports():
    servers: list[ManyPorts] = []

    async def make(n: int) -> tuple[ManyPorts, list[int]]:
        s = ManyPorts(n)
        servers.append(s)
        return s, await s.start()

    yield make
    for s in servers:
        await s.stop()


def _endpoints(ds: Datastore, ports: list[int]) -> list[Endpoint]:
    return [ds.upsert(Endpoint(name=f"127.0.0.1:{p}", address="127.0.0.1", port=p)) for p in ports]


async def test_collector_follows_the_pool_size_and_feeds_the_gauge(many_ports):
    _, ports = await many_ports(40)
    registry = CollectorRegistry()
    gauge = Gauge("epp_scrape_interval_seconds", "test", registry=registry)
    ds = Datastore()
    c = MetricsCollector(ds, interval=0.01, max_scrapes_per_second=100, interval_gauge=gauge)
    assert c.effective_interval == 0.01
    _endpoints(ds, ports[:20])
    await c.start()
    try:
        assert c.effective_interval == pytest.approx(0.2)
        _endpoints(ds, ports[20:])
        assert c.effective_interval == pytest.approx(0.4)
        assert registry.get_sample_value("epp_scrape_interval_seconds") == pytest.approx(0.4)
        for p in ports[:39]:
            ds.remove(f"127.0.0.1:{p}")
        assert c.effective_interval == pytest.approx(0.01)  # 1 endpoint: back to the floor
        assert registry.get_sample_value("epp_scrape_interval_seconds") == pytest.approx(0.01)
    finally:
        await c.stop()


async def test_many_real_endpoints_stay_within_the_scrape_budget(many_ports):
    n, cap = 60, 150.0  # floor 5 ms would be 12,000 scrapes/s; the cap makes it 0.4 s per endpoint
    server, ports = await many_ports(n)
    ds = Datastore()
    eps = _endpoints(ds, ports)
    c = MetricsCollector(ds, interval=0.005, max_scrapes_per_second=cap)
    await c.start()
    try:
        assert c.effective_interval == pytest.approx(n / cap)
        # Every endpoint is scraped (the cap slows scraping down, it does not starve anyone).
        await wait_until(
            lambda: len(server.hits) == n and all(e.metrics.waiting_queue_size == 2 for e in eps), timeout=20
        )
        before, t0 = dict(server.hits), time.monotonic()
        await asyncio.sleep(1.5)
        after, window = dict(server.hits), time.monotonic() - t0
    finally:
        await c.stop()
    served = sum(after.values()) - sum(before.values())
    # Each endpoint may have one scrape more than window/interval (where the window cuts its phase).
    assert served <= cap * window + n, f"{served} scrapes in {window:.2f}s, cap {cap}/s"
    per_endpoint = max(after[p] - before.get(p, 0) for p in after)
    assert per_endpoint <= window / c.effective_interval + 1


def test_staleness_thresholds_allow_for_the_stretch():
    from epp.datalayer.endpoint import EndpointMetrics
    from epp.flowcontrol.saturation import UtilizationDetector

    m = EndpointMetrics(update_time=100.0, interval_stretch=3.0)
    assert not m.stale(0.2, 102.0)  # 2 s old, but scraped every ~3 s: as fresh as it gets
    assert m.stale(0.2, 103.5)
    assert EndpointMetrics().stale(10.0, 1.0)  # never scraped
    e = Endpoint(name="a", address="127.0.0.1", port=1, metrics=m)
    # The reference detector's 200 ms would call every endpoint of a big pool saturated (and shed).
    assert UtilizationDetector().saturation([e], now=102.0) == 0.0


async def test_scraped_metrics_carry_the_stretch(many_ports):
    _, ports = await many_ports(4)
    ds = Datastore()
    eps = _endpoints(ds, ports)
    c = MetricsCollector(ds, interval=0.05, max_scrapes_per_second=10)  # 4 endpoints: every 0.4 s
    await c.start()
    try:
        await wait_until(lambda: all(e.metrics.update_time for e in eps), timeout=5)
        assert [e.metrics.interval_stretch for e in eps] == [pytest.approx(0.35)] * 4
    finally:
        await c.stop()

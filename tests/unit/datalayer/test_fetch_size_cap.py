"""The /metrics size cap, both fetch backends, against real HTTP servers on 127.0.0.1.

A server that streams an endless page must cost a bounded number of bytes: the fetcher
stops at its cap with PageTooLarge, holds at most the cap plus one chunk, and closes the
connection. Bounds are asserted on bytes (what the fetcher read, what tracemalloc saw
allocated), never on time.
"""

from __future__ import annotations

import contextlib
import tracemalloc

import pytest
from aiohttp import web

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.fetch import CHUNK, DEFAULT_MAX_PAGE_BYTES, FetchError, PageTooLarge, make_fetcher
from epp.datalayer.scraper import MetricsCollector
from epp.datalayer.vllmpage import VllmState, vllm_page

from .conftest import wait_until

BACKENDS = ["aiohttp", "httpx"]
# A valid vLLM gauge line repeated: the page parses as far as it goes, only it never ends.
FILLER = b"vllm:num_requests_waiting 1\n" * 2340  # ~64 KB per write
MiB = 1024 * 1024


class PageServer:
    """/endless (and /metrics, for a collector) streams forever, chunked; /declared claims a
    huge Content-Length; /sized?n= serves exactly n bytes."""

    def __init__(self) -> None:
        self.endless_started = 0
        self.endless_ended = 0
        self.bytes_sent = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        self.endless_started += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(FILLER)
                self.bytes_sent += len(FILLER)
        except (ConnectionError, RuntimeError):  # the client hung up: what the cap should cause
            pass
        finally:
            self.endless_ended += 1
        return resp

    async def _declared(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain", "Content-Length": str(10**12)})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write(FILLER)
        return resp

    async def _sized(self, request: web.Request) -> web.Response:
        n = int(request.query["n"])
        return web.Response(body=(FILLER * (n // len(FILLER) + 1))[:n], content_type="text/plain")

    async def start(self) -> PageServer:
        app = web.Application()
        app.router.add_get("/endless", self._endless)
        app.router.add_get("/metrics", self._endless)
        app.router.add_get("/declared", self._declared)
        app.router.add_get("/sized", self._sized)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def pages():
    s = await PageServer().start()
    yield s
    await s.stop()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_endless_page_stops_at_the_cap_and_hangs_up(pages, backend):
    limit = 1 * MiB
    fetcher = make_fetcher(backend, max_bytes=limit)
    try:
        with pytest.raises(PageTooLarge) as err:
            await fetcher.get(pages.url("/endless"), timeout=30)
    finally:
        await fetcher.aclose()
    e = err.value
    assert isinstance(e, FetchError)  # the server answered: not a transport failure
    assert limit < e.read <= limit + CHUNK
    assert "too large" in str(e) and str(limit) in str(e)
    await wait_until(lambda: pages.endless_ended == 1)  # connection closed, not parked for reuse
    # The server stopped shortly after: it only got ahead by what socket buffers hold.
    assert pages.bytes_sent < limit + 16 * MiB


@pytest.mark.parametrize("backend", BACKENDS)
async def test_endless_page_costs_under_50_mb_at_the_default_cap(pages, backend):
    """The issue's target: an endpoint streaming an endless /metrics costs the EPP < 50 MB."""
    fetcher = make_fetcher(backend)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with pytest.raises(PageTooLarge) as err:
            await fetcher.get(pages.url("/endless"), timeout=60)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
        await fetcher.aclose()
    assert DEFAULT_MAX_PAGE_BYTES < err.value.read <= DEFAULT_MAX_PAGE_BYTES + CHUNK
    assert peak < 50 * 1_000_000, f"peak {peak / MiB:.1f} MiB"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_declared_oversize_fails_without_reading(pages, backend):
    fetcher = make_fetcher(backend, max_bytes=MiB)
    try:
        with pytest.raises(PageTooLarge) as err:
            await fetcher.get(pages.url("/declared"), timeout=30)
    finally:
        await fetcher.aclose()
    assert err.value.declared == 10**12 and err.value.read == 0
    assert "Content-Length 1000000000000" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_page_at_the_cap_is_read_one_byte_more_is_not(pages, backend):
    limit = 300_000  # several chunks, so the count runs across chunk boundaries
    fetcher = make_fetcher(backend, max_bytes=limit)
    try:
        body = await fetcher.get(pages.url(f"/sized?n={limit}"), timeout=30)
        assert len(body) == limit and body.startswith(FILLER[:100])
        with pytest.raises(PageTooLarge):
            await fetcher.get(pages.url(f"/sized?n={limit + 1}"), timeout=30)
        assert len(await fetcher.get(pages.url("/sized?n=55000"), timeout=30)) == 55000  # still usable
    finally:
        await fetcher.aclose()


def test_cap_must_be_positive():
    for backend in BACKENDS:
        with pytest.raises(ValueError):
            make_fetcher(backend, max_bytes=0)
    with pytest.raises(ValueError):
        MetricsCollector(Datastore(), max_page_bytes=-1)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_collector_counts_an_oversize_page_as_a_failed_scrape_of_a_live_server(
    pages, metrics_server_factory, backend
):
    good = await metrics_server_factory(vllm_page(VllmState(waiting=3)).encode())
    ds = Datastore()
    endless = ds.upsert(Endpoint(name="endless", address="127.0.0.1", port=pages.port))
    ok = ds.upsert(Endpoint(name="ok", address="127.0.0.1", port=good.port))
    c = MetricsCollector(ds, interval=0.02, timeout=10.0, backend=backend, max_page_bytes=256 * 1024)
    await c.start()
    try:
        await wait_until(lambda: c.stats()["endless"].failed >= 3, timeout=20)
        await wait_until(lambda: ok.metrics.waiting_queue_size == 3)
        s = c.stats()["endless"]
        assert s.ok == 0 and "too large" in s.last_error
        assert endless.metrics.update_time == 0.0
        assert endless.reach.scrape_failures == 0  # it answered: the dead-server filter must not fire
    finally:
        await c.stop()

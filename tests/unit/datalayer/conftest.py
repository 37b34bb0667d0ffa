"""A real /metrics HTTP server on 127.0.0.1 whose behaviour a test can change on the fly."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web


class MetricsServer:
    """Serves `body` at /metrics; `mode` switches to hang / garbage / error / slow."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.mode = "ok"  # ok | hang | garbage | error | slow
        self.slow_seconds = 0.1
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.mode == "hang":
                await self._release.wait()
            elif self.mode == "slow":
                await asyncio.sleep(self.slow_seconds)
            if self.mode == "garbage":
                return web.Response(body=b"\xff\xfe<html>{not metrics}\n\x00" * 50, content_type="text/html")
            if self.mode == "error":
                return web.Response(status=500, text="boom")
            return web.Response(body=self.body, content_type="text/plain")
        finally:
            self.in_flight -= 1

    async def start(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def metrics_server_factory():
    servers: list[MetricsServer] = []

    async def make(body: bytes = b"") -> MetricsServer:
        s = await MetricsServer(body).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        await s.stop()


async def wait_until(cond, timeout: float = 5.0, step: float = 0.01) -> None:
    """Poll `cond()` until true; fail after `timeout` (generous: never a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)

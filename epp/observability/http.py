"""The metrics port: Prometheus on /metrics, plus /healthz and /readyz with a readable detail.

gRPC health (the reference's probes) can only say SERVING or NOT_SERVING; an operator looking
at an API-server outage or a lost election wants to read why, so /readyz says it in text.

Connections are handled on the event loop by aiohttp, not a thread each: the old threaded
WSGI server spent a thread per connection and never timed one out (200 idle connections were
259 threads). Here an idle connection is closed after `idle_timeout`, at most
`max_connections` are open (a new one evicts the longest-idle one, so idle sockets cannot lock
out a scrape), and a client that stops reading its response is cut off after `write_timeout`.
Rendering the page is CPU work that can take long on a big registry, so it runs on one worker
thread, and scrapes that arrive while a render is running share its result: a scrape storm
costs one render at a time and never blocks the event loop that routes requests.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from epp.listen import bind_failure
from epp.observability.health import SERVING, HealthState

log = logging.getLogger("epp.metrics")

# What an authorizer answers: None lets the request through, a Response is sent instead.
Authorize = Callable[[web.BaseRequest], Awaitable[web.StreamResponse | None]]


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 100
    idle_timeout: float = 30.0  # > a 15 s scrape interval, so a scraper's keep-alive connection is reused
    write_timeout: float = 10.0


_BUSY_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: every connection slot is serving a request right now."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_BUSY_RESPONSE)  # type: ignore[attr-defined]
        transport.close()


class _BoundedServer(web.Server):
    """aiohttp's low-level server with a cap on open connections.

    Connections are counted from the moment their protocol is made: asyncio accepts a whole
    backlog in one tick before any of them reports `connection_made`, so aiohttp's own list
    would let a burst through.
    """

    def __init__(self, handler, limits: HttpLimits, **kwargs) -> None:
        super().__init__(handler, keepalive_timeout=limits.idle_timeout, **kwargs)
        self.limits = limits
        self.busy: set[RequestHandler] = set()
        self.tracked: dict[RequestHandler, float] = {}  # open (or opening) -> when it last became idle
        self.refused = 0
        self.evicted = 0

    def _prune(self, now: float) -> None:
        # A protocol whose transport never came (accept failed half-way) gets no connection_lost.
        for h, since in list(self.tracked.items()):
            if h.transport is None and now - since > 5.0 and h not in self.busy:
                del self.tracked[h]

    def __call__(self):
        now = time.monotonic()
        if len(self.tracked) >= self.limits.max_connections:
            self._prune(now)
        if len(self.tracked) >= self.limits.max_connections:
            idle = [h for h in self.tracked if h not in self.busy and h.transport is not None]
            if not idle:
                self.refused += 1
                return _Refuse()
            oldest = min(idle, key=self.tracked.__getitem__)
            del self.tracked[oldest]
            oldest.force_close()
            self.evicted += 1
        handler = super().__call__()
        self.tracked[handler] = now
        return handler

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self.tracked.pop(handler, None)
        self.busy.discard(handler)
        super().connection_lost(handler, exc)


class MetricsPage:
    """Renders the registry on a worker thread; concurrent scrapes of one format share a render."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="metrics-render")
        self._inflight: dict[tuple[str, bool], asyncio.Future] = {}

    def _render(self, encoder, compress: bool) -> bytes:
        body = encoder(self.registry)
        return gzip.compress(body, compresslevel=1) if compress else body

    async def render(self, accept: str, accept_encoding: str) -> tuple[bytes, str, bool]:
        encoder, content_type = choose_encoder(accept)
        compress = gzip_accepted(accept_encoding)
        key = (content_type, compress)
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.wrap_future(self._executor.submit(self._render, encoder, compress))
            self._inflight[key] = fut
            fut.add_done_callback(functools.partial(self._forget, key))
        body = await asyncio.shield(fut)
        return body, content_type, compress

    def _forget(self, key: tuple[str, bool], _fut: asyncio.Future) -> None:
        self._inflight.pop(key, None)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ObservabilityServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthState,
        detail: Callable[[], str],
        limits: HttpLimits = HttpLimits(),
        authorize: Authorize | None = None,
    ) -> None:
        self.health = health
        self.detail = detail
        self.limits = limits
        self.authorize = authorize
        self.page = MetricsPage(registry)
        self._server: _BoundedServer | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def open_connections(self) -> int:
        return len(self._server.tracked) if self._server is not None else 0

    async def start(self, addr: str, port: int, flag: str = "--metrics-port") -> None:
        self._server = _BoundedServer(self._handle, self.limits, access_log=None)
        self._runner = web.ServerRunner(self._server, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, addr, port, reuse_address=True).start()
        except OSError:
            await self._runner.cleanup()
            raise bind_failure(addr, port, flag) from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.page.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._server is not None
        proto = request.protocol
        self._server.busy.add(proto)
        try:
            return await self._route(request)
        finally:
            self._server.busy.discard(proto)
            if proto in self._server.tracked:
                self._server.tracked[proto] = time.monotonic()

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/healthz":
            return web.Response(text="ok\n")
        if path == "/readyz":
            ready = self.health.status("readiness") == SERVING
            text = ("ready" if ready else "not ready") + "; " + self.detail() + "\n"
            return web.Response(text=text, status=200 if ready else 503)
        if path != "/metrics":
            return web.Response(text="not found: this port serves /metrics, /healthz and /readyz\n", status=404)
        if request.method not in ("GET", "HEAD"):
            return web.Response(text="method not allowed\n", status=405, headers={"Allow": "GET, HEAD"})
        if self.authorize is not None:
            denied = await self.authorize(request)
            if denied is not None:
                return denied
        return await self._metrics(request)

    async def _metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        body, content_type, compressed = await self.page.render(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        if compressed:
            resp.headers["Content-Encoding"] = "gzip"
        resp.content_length = len(body)
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await resp.prepare(request)
                if request.method != "HEAD":
                    await resp.write(body)
                await resp.write_eof()
        except TimeoutError:
            log.debug("metrics scrape from %s cut off: it did not read its response", request.remote)
            request.protocol.force_close()
        return resp

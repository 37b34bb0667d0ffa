"""The metrics port's connection handling, over real sockets: timeouts, the connection cap, shared renders."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily

from epp.observability.health import HealthState
from epp.observability.http import HttpLimits, ObservabilityServer
from epp.stack.processes import free_port


class SlowCollector:
    """A collector whose collect() takes `seconds` (on the render thread) and counts its calls."""

    def __init__(self, seconds: float = 0.0, samples: int = 1) -> None:
        self.seconds, self.samples, self.calls = seconds, samples, 0

    def collect(self):
        self.calls += 1
        time.sleep(self.seconds)
        g = GaugeMetricFamily("slow_gauge", "a test gauge", labels=["i"])
        for i in range(self.samples):
            g.add_metric([f"{i:08d}" + "x" * 80], i)
        yield g


async def serve(limits: HttpLimits | None = None, collector=None, authorize=None):
    limits = limits or HttpLimits()
    registry = CollectorRegistry()
    Gauge("test_up", "test", registry=registry).set(1)
    if collector is not None:
        registry.register(collector)
    server = ObservabilityServer(registry, HealthState(lambda: True), lambda: "detail", limits, authorize)
    port = free_port()
    await server.start("127.0.0.1", port)
    return server, port


async def idle_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


async def closed_by_server(s: socket.socket, timeout: float = 5.0) -> bool:
    try:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 4096), timeout)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return data == b""


async def test_routes_and_formats():
    server, port = await serve()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/metrics", headers={"Accept-Encoding": "identity"})
            assert r.status_code == 200 and "test_up 1.0" in r.text
            assert r.headers["content-type"].startswith("text/plain")
            r = await c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert r.headers["content-type"].startswith("application/openmetrics-text") and "# EOF" in r.text
            raw = await c.send(c.build_request("GET", "/metrics", headers={"Accept-Encoding": "gzip"}), stream=True)
            body = await raw.aread()  # httpx decodes: check the header and that the wire bytes were gzip
            assert raw.headers["content-encoding"] == "gzip" and b"test_up" in body
            assert (await c.get("/healthz")).text == "ok\n"
            assert (await c.get("/readyz")).text == "ready; detail\n"
            assert (await c.get("/")).status_code == 404
            assert (await c.post("/metrics")).status_code == 405
            r = await c.head("/metrics")
            assert r.status_code == 200 and r.content == b""
    finally:
        await server.stop()


async def test_gzip_body_is_gzip_on_the_wire():
    server, port = await serve()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Encoding: gzip" in head and b"test_up 1.0" in gzip.decompress(body)
        writer.close()
    finally:
        await server.stop()


async def test_idle_connection_is_closed_after_the_idle_timeout():
    server, port = await serve(HttpLimits(idle_timeout=0.3))
    try:
        silent = await idle_socket(port)  # never sends a request
        assert await closed_by_server(silent)
        silent.close()
        # A kept-alive connection serves several requests, then is closed once idle.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(3):
                assert (await c.get("/healthz")).status_code == 200
        assert server.open_connections <= 1
    finally:
        await server.stop()


async def test_idle_connections_cannot_lock_out_a_scrape():
    server, port = await serve(HttpLimits(max_connections=5, idle_timeout=60))
    try:
        sockets = [await idle_socket(port) for _ in range(20)]
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200 and "test_up" in r.text
        assert server.open_connections <= 5
        closed = [await closed_by_server(s, timeout=0.5) for s in sockets]
        assert sum(closed) >= 15  # the longest-idle ones made room
        for s in sockets:
            s.close()
    finally:
        await server.stop()


async def test_when_every_slot_is_busy_a_new_connection_gets_503():
    gate = asyncio.Event()
    entered = 0

    async def hold(_request):
        nonlocal entered
        entered += 1
        await gate.wait()
        return None

    server, port = await serve(HttpLimits(max_connections=3), authorize=hold)
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            held = [asyncio.create_task(c.get(f"http://127.0.0.1:{port}/metrics")) for _ in range(3)]
            while entered < 3:
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 503")
            writer.close()
            gate.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
    finally:
        await server.stop()


async def test_a_client_that_does_not_read_is_cut_off():
    server, port = await serve(HttpLimits(write_timeout=0.5), collector=SlowCollector(samples=100_000))
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # ~10 MB answer, never read
        deadline = time.monotonic() + 10
        while server.open_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert server.open_connections == 0
        s.close()
    finally:
        await server.stop()


async def test_concurrent_scrapes_share_one_render_off_the_event_loop():
    slow = SlowCollector(seconds=0.5)
    server, port = await serve(collector=slow)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            scrapes = [asyncio.create_task(c.get("/metrics")) for _ in range(20)]
            await asyncio.sleep(0.1)
            # The render is sleeping on its thread; the event loop still answers.
            assert (await c.get("/healthz")).status_code == 200
            assert not any(t.done() for t in scrapes)
            results = await asyncio.gather(*scrapes)
        assert all(r.status_code == 200 and "slow_gauge" in r.text for r in results)
        assert slow.calls <= 2
    finally:
        await server.stop()


async def test_busy_port_is_a_clear_bind_error():
    server, port = await serve()
    try:
        other = ObservabilityServer(CollectorRegistry(), HealthState(lambda: True), lambda: "")
        with pytest.raises(
            OSError, match=rf"cannot listen on 127.0.0.1:{port} \(--metrics-port\): address already in use"
        ):
            await other.start("127.0.0.1", port)
    finally:
        await server.stop()

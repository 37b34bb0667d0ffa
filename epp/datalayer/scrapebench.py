"""What does scraping cost? `python -m epp.datalayer.scrapebench [--backend both]`

A child process serves N realistic vLLM /metrics pages (~56 KB each, see vllmpage.py) from
an aiohttp server on N ports of 127.0.0.1; this process runs a MetricsCollector against
them for a fixed time and reports its own CPU (user+sys from getrusage, so the server's
work is not counted) as a percentage of one core, plus scrapes/s and failures, and the
event-loop lag a pick on the same loop would see (a 1 ms sleep's overshoot, p50/p99/max).
The collector applies the scrape budget (scrapebudget.py) unless `--no-cap`, which
measures the raw per-scrape cost the budget is derived from.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import socket
import time

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.fetch import BACKENDS
from epp.datalayer.scrapebudget import MAX_SCRAPES_PER_SECOND
from epp.datalayer.scraper import MetricsCollector
from epp.datalayer.vllmpage import VllmState, vllm_page


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _serve(ports: list[int], ready) -> None:
    """Child process: one aiohttp app listening on every port, a distinct page per port."""
    from aiohttp import web

    pages = {
        p: vllm_page(VllmState(waiting=i % 7, running=i % 13, kv_usage=(i % 10) / 10), seed=i).encode()
        for i, p in enumerate(ports)
    }

    async def metrics(request: web.Request) -> web.Response:
        assert request.transport is not None
        port = request.transport.get_extra_info("sockname")[1]
        return web.Response(body=pages[port], content_type="text/plain", charset="utf-8")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for p in ports:
            await web.TCPSite(runner, "127.0.0.1", p).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    """How late a 1 ms timer fires: what a pick arriving on this loop waits behind scrapes."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


async def _measure(
    ports: list[int], backend: str, interval: float, seconds: float, max_rate: float
) -> dict[str, float]:
    ds = Datastore()
    for p in ports:
        ds.upsert(Endpoint(name=f"127.0.0.1:{p}", address="127.0.0.1", port=p))
    collector = MetricsCollector(ds, interval=interval, timeout=1.0, backend=backend, max_scrapes_per_second=max_rate)
    await collector.start()
    # Warm-up: connections open, caches filled, and every endpoint past its first (spread) scrape.
    await asyncio.sleep(max(1.0, 1.5 * collector.effective_interval))
    ok0 = sum(s.ok for s in collector.stats().values())
    failed0 = sum(s.failed for s in collector.stats().values())
    cpu0, t0 = _cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = _cpu(), time.monotonic()
    ok1 = sum(s.ok for s in collector.stats().values())
    # The lag probe wakes the loop every millisecond: a window of its own, so its CPU is not
    # billed to the scrapes.
    lags: list[float] = []
    stop = asyncio.Event()
    lag_task = asyncio.create_task(_loop_lag(lags, stop))
    await asyncio.sleep(min(seconds, 5.0))
    stop.set()
    await lag_task
    stats = collector.stats().values()
    ok = ok1 - ok0
    failed = sum(s.failed for s in stats) - failed0
    mean_ms = 1000 * sum(s.last_duration for s in stats) / max(1, len(stats))
    interval_now = collector.effective_interval
    await collector.stop()
    wall = t1 - t0
    return {
        "effective_interval": interval_now,
        "lag_p50_ms": 1000 * _pct(lags, 0.5),
        "lag_p99_ms": 1000 * _pct(lags, 0.99),
        "lag_max_ms": 1000 * max(lags, default=0.0),
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "scrapes_per_s": ok / wall,
        "failed": failed,
        "cpu_us_per_scrape": 1e6 * (cpu1 - cpu0) / max(1, ok),
        "last_scrape_ms": mean_ms,
    }


def _parse_cost() -> tuple[float, float]:
    """Microseconds per page: our selective parse+extract, and prometheus_client's full parse."""
    from prometheus_client.parser import text_string_to_metric_families

    from epp.datalayer.engines import WANTED, extract
    from epp.datalayer.promtext import parse_bytes

    body = vllm_page(VllmState(waiting=3, running=5, kv_usage=0.5)).encode()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        extract("vllm", parse_bytes(body, WANTED["vllm"]))
    ours = (time.perf_counter() - t0) / n
    n = 50
    t0 = time.perf_counter()
    for _ in range(n):
        for _family in text_string_to_metric_families(body.decode()):
            pass
    full = (time.perf_counter() - t0) / n
    return ours * 1e6, full * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=32)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    ap.add_argument(
        "--max-scrapes-per-second",
        type=float,
        default=MAX_SCRAPES_PER_SECOND,
        help=f"the pool's scrape budget (default {MAX_SCRAPES_PER_SECOND:g})",
    )
    ap.add_argument("--no-cap", action="store_true", help="scrape at --interval whatever the pool size")
    args = ap.parse_args(argv)
    max_rate = 0.0 if args.no_cap else args.max_scrapes_per_second

    ports = _free_ports(args.endpoints)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(ports, ready), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.2):
            if not server.is_alive() or time.monotonic() > deadline:
                # Most likely one of the ports was taken between choosing and binding it.
                raise SystemExit(f"metrics server did not start (exit code {server.exitcode}); run again")
        page_kb = len(vllm_page(VllmState())) / 1024
        print(
            f"{args.endpoints} endpoints, interval {args.interval * 1000:g} ms, "
            f"budget {'none' if not max_rate else f'{max_rate:g} scrapes/s'}, page {page_kb:.0f} KB, "
            f"{args.seconds:g} s per backend"
        )
        ours, full = _parse_cost()
        print(f"  parse: selective parse+extract {ours:.0f} us/page; prometheus_client full parse {full:.0f} us/page")
        backends = list(BACKENDS) if args.backend == "both" else [args.backend]
        for b in backends:
            r = asyncio.run(_measure(ports, b, args.interval, args.seconds, max_rate))
            ideal = args.endpoints / r["effective_interval"]
            print(
                f"  {b:8s} effective interval {r['effective_interval'] * 1000:.1f} ms (ideal {ideal:.0f} scrapes/s)  "
                f"CPU {r['cpu_pct']:5.1f}% of one core  {r['scrapes_per_s']:6.0f} scrapes/s  "
                f"{r['cpu_us_per_scrape']:5.0f} us CPU/scrape  failed {r['failed']:.0f}  "
                f"last scrape {r['last_scrape_ms']:.1f} ms  loop lag p50 {r['lag_p50_ms']:.2f} "
                f"p99 {r['lag_p99_ms']:.2f} max {r['lag_max_ms']:.1f} ms"
            )
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()

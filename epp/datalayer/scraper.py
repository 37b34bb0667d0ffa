"""One scrape loop per endpoint, all on one event loop and one shared HTTP client.

Each loop fetches the endpoint's metrics URL (`endpoint.metrics_url` with the configured
scheme), parses only the families its engine needs, and swaps in a new `EndpointMetrics`
(readers that took a reference keep a consistent snapshot). A slow scrape delays the next
one instead of stacking them: the loop waits for the fetch, then sleeps whatever is left of
the interval (like Go's ticker dropping missed ticks). The interval is the configured one
stretched to the pool's scrape budget (scrapebudget.py), re-read on every round so the
schedule follows the pool as it grows and shrinks. Errors are counted and logged at debug,
at most once per endpoint per LOG_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.engines import DEFAULT_ENGINE, WANTED, extract
from epp.datalayer.fetch import (
    DEFAULT_BACKEND,
    DEFAULT_MAX_PAGE_BYTES,
    Fetcher,
    FetchError,
    PageTooLarge,
    TlsError,
    make_fetcher,
)
from epp.datalayer.promtext import parse_bytes
from epp.datalayer.scrapebudget import MAX_SCRAPES_PER_SECOND, effective_interval

log = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds between debug lines about the same endpoint's failures
SCHEMES = ("http", "https")


def scrape_url(ep: Endpoint, scheme: str) -> str:
    """The endpoint's metrics URL with `scheme` (Endpoint builds it for http)."""
    url = ep.metrics_url
    return scheme + url[url.index("://") :]


@dataclass(slots=True)
class ScrapeStats:
    """Per-endpoint counters for observability (read-only for others)."""

    ok: int = 0  # page fetched and at least one field updated
    failed: int = 0  # fetch error, timeout, bad status, or nothing usable in the page
    last_duration: float = 0.0  # seconds, of the last attempt (ok or not)
    last_error: str = ""  # the last attempt's problem ("" when it was clean)
    _last_log: float = 0.0
    _suppressed: int = 0
    _warned: bool = False


class MetricsCollector:
    def __init__(
        self,
        datastore: Datastore,
        interval: float = 0.05,
        timeout: float = 1.0,
        *,
        fetcher: Fetcher | None = None,
        backend: str = DEFAULT_BACKEND,
        scheme: str = "http",
        insecure_skip_verify: bool = True,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        max_scrapes_per_second: float = MAX_SCRAPES_PER_SECOND,
        interval_gauge=None,
    ) -> None:
        """`interval` is the floor of the per-endpoint period (`--refresh-metrics-interval`);
        `max_scrapes_per_second` caps the whole pool's rate (<= 0: no cap); `interval_gauge`, a
        prometheus Gauge, then always reads `effective_interval`. `insecure_skip_verify` and
        `max_page_bytes` configure the fetcher made at start (not a `fetcher` passed in)."""
        if interval <= 0 or timeout <= 0:
            raise ValueError(f"scrape interval and timeout must be positive (got {interval}, {timeout})")
        if scheme not in SCHEMES:
            raise ValueError(f"metrics scheme must be http or https (got {scheme!r})")
        if max_page_bytes <= 0:
            raise ValueError(f"max_page_bytes must be positive (got {max_page_bytes})")
        self._ds = datastore
        self.interval = interval
        self.timeout = timeout
        self.scheme = scheme
        self.insecure_skip_verify = insecure_skip_verify
        self.max_page_bytes = max_page_bytes
        self.max_scrapes_per_second = max_scrapes_per_second
        self._effective = interval
        self._fetcher = fetcher
        self._backend = backend
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._stats: dict[str, ScrapeStats] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # Called after each page that updated an endpoint (flow control re-reads saturation).
        self.on_update: list[Callable[[], None]] = []
        if interval_gauge is not None:
            interval_gauge.set_function(lambda: self.effective_interval)

    @property
    def effective_interval(self) -> float:
        """Seconds between two scrapes of one endpoint right now: `interval`, or longer when
        the pool is big enough that the scrape budget stretches it."""
        return self._effective

    def _reschedule(self) -> None:
        self._effective = effective_interval(self.interval, len(self._tasks), self.max_scrapes_per_second)

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._fetcher is None:
            self._fetcher = make_fetcher(
                self._backend, max_bytes=self.max_page_bytes, insecure_skip_verify=self.insecure_skip_verify
            )
        self._unsubscribe = self._ds.subscribe(on_add=self._added, on_remove=self._removed)
        for ep in self._ds.endpoints():
            self._start_task(ep)

    async def stop(self) -> None:
        if self._loop is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._reschedule()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = None
        self._loop = None

    # ---- observability ----------------------------------------------------------------

    def stats(self) -> dict[str, ScrapeStats]:
        """Counters by endpoint name, for endpoints being scraped (dropped on removal)."""
        return self._stats

    def scraping(self) -> list[str]:
        """Names of endpoints with a running scrape loop."""
        return [ep.name for ep in self._tasks]

    # ---- datastore callbacks (may arrive from a source thread) -------------------------

    def _added(self, ep: Endpoint) -> None:
        self._on_loop(self._start_task, ep)

    def _removed(self, ep: Endpoint) -> None:
        self._on_loop(self._stop_task, ep)

    def _on_loop(self, fn, ep: Endpoint) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(ep)
            return
        try:
            loop.call_soon_threadsafe(fn, ep)
        except RuntimeError:  # the loop closed between the check and the call: nothing to do
            pass

    def _start_task(self, ep: Endpoint) -> None:
        if self._loop is None or ep in self._tasks:
            return
        stats = self._stats[ep.name] = ScrapeStats()
        self._tasks[ep] = self._loop.create_task(self._run(ep, stats), name=f"scrape:{ep.name}")
        self._reschedule()

    def _stop_task(self, ep: Endpoint) -> None:
        task = self._tasks.pop(ep, None)
        if task is not None:
            task.cancel()
            self._reschedule()
            # Forget the counters too: with pod churn, names of dead pods would pile up.
            self._stats.pop(ep.name, None)

    # ---- the loop ---------------------------------------------------------------------

    async def _run(self, ep: Endpoint, stats: ScrapeStats) -> None:
        # Spread the first scrapes over one interval so N loops do not fire in lockstep (this
        # runs after every endpoint known at start has its task, so the interval fits the pool).
        await asyncio.sleep(random.random() * self._effective)
        url = scrape_url(ep, self.scheme)
        while True:
            started = time.monotonic()
            await self._scrape_once(ep, url, stats)
            stats.last_duration = elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self._effective - elapsed))

    async def _scrape_once(self, ep: Endpoint, url: str, stats: ScrapeStats) -> None:
        fetcher = self._fetcher
        if fetcher is None:
            return
        try:
            # The fetcher's own timeout covers the connection; this one also bounds a server
            # that trickles bytes forever.
            async with asyncio.timeout(self.timeout):
                body = await fetcher.get(url, self.timeout)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            ep.reach.scrape_failures += 1
            self._fail(ep, stats, f"timeout after {self.timeout:g}s")
            return
        except FetchError as e:  # the server answered (status, size cap, TLS), only not with a page
            ep.reach.scrape_failures = 0
            self._fail(ep, stats, str(e))
            if isinstance(e, (TlsError, PageTooLarge)) and not stats._warned:
                # Settings or a hostile server, not a passing fault: say so once where operators look.
                stats._warned = True
                log.warning("scrape %s (%s): %s", ep.name, url, e)
            return
        except Exception as e:  # connection refused/reset, protocol errors: nobody answered
            ep.reach.scrape_failures += 1
            self._fail(ep, stats, f"{type(e).__name__}: {e}")
            return
        ep.reach.scrape_failures = 0
        try:
            families = parse_bytes(body, WANTED.get(ep.engine) or WANTED[DEFAULT_ENGINE])
            fields, errors = extract(ep.engine, families)
        except Exception as e:  # neither should raise; if one does, the loop must live on
            self._fail(ep, stats, f"parse: {type(e).__name__}: {e}")
            return
        if fields:
            fields["update_time"] = time.monotonic()
            fields["interval_stretch"] = max(0.0, self._effective - self.interval)
            fields["picks_seen"] = ep.inflight.picks
            ep.metrics = dataclasses.replace(ep.metrics, **fields)
            for listener in self.on_update:
                listener()
            ep.reach.last_scrape_failed = False
            stats.ok += 1
            stats.last_error = "; ".join(errors)
            if errors:
                self._log(ep, stats, stats.last_error)
        else:
            self._fail(ep, stats, "; ".join(errors) or "no metrics in page")

    def _fail(self, ep: Endpoint, stats: ScrapeStats, why: str) -> None:
        ep.reach.last_scrape_failed = True
        stats.failed += 1
        stats.last_error = why
        self._log(ep, stats, why)

    def _log(self, ep: Endpoint, stats: ScrapeStats, why: str) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = time.monotonic()
        if now - stats._last_log < LOG_EVERY:
            stats._suppressed += 1
            return
        log.debug(
            "scrape %s (%s): %s [%d similar suppressed]",
            ep.name,
            scrape_url(ep, self.scheme),
            why,
            stats._suppressed,
        )
        stats._last_log = now
        stats._suppressed = 0

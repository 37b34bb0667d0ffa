"""Scraping model servers' /metrics into `Endpoint.metrics`: the bookkeeping both scrape
loops share, and the loop that runs inside the EPP process.

CollectorBase follows the datastore (a scrape loop per endpoint), keeps per-endpoint counters,
and applies each attempt's outcome (scrape.py) to its endpoint: a new `EndpointMetrics`
swapped in whole (readers that took a reference keep a consistent snapshot), the reachability
counters the candidate filter reads, rate-limited debug logs. Two loops feed it:

* MetricsCollector (here, `--metrics-scraper inline`): one asyncio task per endpoint on the
  EPP's own event loop and one shared HTTP client;
* ProcessCollector (scrapeprocess.py, the default): the same loops in a child process, so
  fetching and parsing pages never delays a pick (docs/datalayer.md).

A slow scrape delays the next one instead of stacking them: the loop waits for the fetch, then
sleeps whatever is left of the interval (like Go's ticker dropping missed ticks). The interval
is the configured one stretched to the pool's scrape budget (scrapebudget.py), re-read on
every round so the schedule follows the pool as it grows and shrinks. Errors are counted and
logged at debug, at most once per endpoint per LOG_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.fetch import DEFAULT_BACKEND, DEFAULT_MAX_PAGE_BYTES, Fetcher, make_fetcher
from epp.datalayer.scrape import ANSWERED, NO_ANSWER, OK, SCHEMES, ScrapeResult, scrape_loop, scrape_url
from epp.datalayer.scrapebudget import MAX_SCRAPES_PER_SECOND, effective_interval

log = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds between debug lines about the same endpoint's failures


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


class CollectorBase:
    """Endpoint bookkeeping and outcome handling; subclasses run the loops (`_begin`, `_end`)."""

    def __init__(
        self,
        datastore: Datastore,
        interval: float = 0.05,
        timeout: float = 1.0,
        *,
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
        `max_page_bytes` configure the fetcher, an HTTP client of `backend` (fetch.py)."""
        if interval <= 0 or timeout <= 0:
            raise ValueError(f"scrape interval and timeout must be positive (got {interval}, {timeout})")
        if scheme not in SCHEMES:
            raise ValueError(f"metrics scheme must be http or https (got {scheme!r})")
        if max_page_bytes <= 0:
            raise ValueError(f"max_page_bytes must be positive (got {max_page_bytes})")
        self._ds = datastore
        self.backend = backend
        self.interval = interval
        self.timeout = timeout
        self.scheme = scheme
        self.insecure_skip_verify = insecure_skip_verify
        self.max_page_bytes = max_page_bytes
        self.max_scrapes_per_second = max_scrapes_per_second
        self._effective = interval
        self._scraped: set[Endpoint] = set()
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
        self._effective = effective_interval(self.interval, len(self._scraped), self.max_scrapes_per_second)

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        await self._open()
        self._unsubscribe = self._ds.subscribe(on_add=self._added, on_remove=self._removed)
        for ep in self._ds.endpoints():
            self._start(ep)

    async def stop(self) -> None:
        if self._loop is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        gone = list(self._scraped)
        self._scraped.clear()
        self._reschedule()
        await self._close(gone)
        self._loop = None

    async def _open(self) -> None:
        """Get ready to scrape (make the client, start the child)."""

    async def _close(self, endpoints: list[Endpoint]) -> None:
        """Stop every loop (those of `endpoints` were running) and release what _open made."""

    def _begin(self, ep: Endpoint) -> None:
        """Start scraping `ep` (on the loop; `_effective` already counts it)."""
        raise NotImplementedError

    def _end(self, ep: Endpoint) -> None:
        """Stop scraping `ep` (on the loop)."""
        raise NotImplementedError

    # ---- observability ----------------------------------------------------------------

    def stats(self) -> dict[str, ScrapeStats]:
        """Counters by endpoint name, for endpoints being scraped (dropped on removal)."""
        return self._stats

    def scraping(self) -> list[str]:
        """Names of endpoints with a running scrape loop."""
        return [ep.name for ep in self._scraped]

    # ---- datastore callbacks (may arrive from a source thread) -------------------------

    def _added(self, ep: Endpoint) -> None:
        self._on_loop(self._start, ep)

    def _removed(self, ep: Endpoint) -> None:
        self._on_loop(self._stop, ep)

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

    def _start(self, ep: Endpoint) -> None:
        if self._loop is None or ep in self._scraped:
            return
        self._stats[ep.name] = ScrapeStats()
        self._scraped.add(ep)
        self._reschedule()
        self._begin(ep)

    def _stop(self, ep: Endpoint) -> None:
        if ep not in self._scraped:
            return
        self._scraped.discard(ep)
        self._reschedule()
        self._end(ep)
        # Forget the counters too: with pod churn, names of dead pods would pile up.
        self._stats.pop(ep.name, None)

    # ---- outcomes -----------------------------------------------------------------------

    def apply(self, ep: Endpoint, result: ScrapeResult) -> None:
        """What one attempt's outcome does to its endpoint (on the loop)."""
        stats = self._stats.get(ep.name)
        if stats is None or ep not in self._scraped:
            return  # removed while the attempt ran
        stats.last_duration = result.duration
        if result.kind == NO_ANSWER:
            ep.reach.scrape_failures += 1
            self._fail(ep, stats, result.why)
            return
        ep.reach.scrape_failures = 0
        if result.kind != OK:
            self._fail(ep, stats, result.why)
            if result.kind == ANSWERED and result.warn and not stats._warned:
                # Settings or a hostile server, not a passing fault: say so once where operators look.
                stats._warned = True
                log.warning("scrape %s (%s): %s", ep.name, scrape_url(ep.metrics_url, self.scheme), result.why)
            return
        fields = result.fields
        fields["update_time"] = time.monotonic()
        fields["interval_stretch"] = max(0.0, self._effective - self.interval)
        fields["picks_seen"] = ep.inflight.picks
        ep.metrics = dataclasses.replace(ep.metrics, **fields)
        for listener in self.on_update:
            listener()
        ep.reach.last_scrape_failed = False
        stats.ok += 1
        stats.last_error = result.why
        if result.why:
            self._log(ep, stats, result.why)

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
            scrape_url(ep.metrics_url, self.scheme),
            why,
            stats._suppressed,
        )
        stats._last_log = now
        stats._suppressed = 0


class MetricsCollector(CollectorBase):
    """The scrape loops on the EPP's own event loop (`--metrics-scraper inline`)."""

    def __init__(
        self,
        datastore: Datastore,
        interval: float = 0.05,
        timeout: float = 1.0,
        *,
        fetcher: Fetcher | None = None,
        **kw: Any,
    ) -> None:
        """`fetcher` replaces the one made at start from the backend and TLS/size settings."""
        super().__init__(datastore, interval, timeout, **kw)
        self._fetcher = fetcher
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}

    async def _open(self) -> None:
        if self._fetcher is None:
            self._fetcher = make_fetcher(
                self.backend, max_bytes=self.max_page_bytes, insecure_skip_verify=self.insecure_skip_verify
            )

    async def _close(self, endpoints: list[Endpoint]) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = None

    def _begin(self, ep: Endpoint) -> None:
        assert self._loop is not None
        self._tasks[ep] = self._loop.create_task(self._run(ep), name=f"scrape:{ep.name}")

    def _end(self, ep: Endpoint) -> None:
        task = self._tasks.pop(ep, None)
        if task is not None:
            task.cancel()

    async def _run(self, ep: Endpoint) -> None:
        # Started after every endpoint known at start has its task, so the first scrapes are
        # spread over an interval that fits the pool.
        assert self._fetcher is not None  # made in _open, before any loop starts
        url = scrape_url(ep.metrics_url, self.scheme)
        await scrape_loop(
            self._fetcher, url, ep.engine, self.timeout, lambda: self._effective, lambda r: self.apply(ep, r)
        )

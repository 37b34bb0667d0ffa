"""One scrape loop per endpoint, all on one event loop and one shared HTTP client.

Each loop fetches `endpoint.metrics_url`, parses only the families its engine needs, and
swaps in a new `EndpointMetrics` (readers that took a reference keep a consistent snapshot).
A slow scrape delays the next one instead of stacking them: the loop waits for the fetch,
then sleeps whatever is left of the interval (like Go's ticker dropping missed ticks).
Errors are counted and logged at debug, at most once per endpoint per LOG_EVERY seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from dataclasses import dataclass

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.engines import DEFAULT_ENGINE, WANTED, extract
from epp.datalayer.fetch import DEFAULT_BACKEND, Fetcher, FetchError, make_fetcher
from epp.datalayer.promtext import parse_bytes

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


class MetricsCollector:
    def __init__(
        self,
        datastore: Datastore,
        interval: float = 0.05,
        timeout: float = 1.0,
        *,
        fetcher: Fetcher | None = None,
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError(f"scrape interval and timeout must be positive (got {interval}, {timeout})")
        self._ds = datastore
        self.interval = interval
        self.timeout = timeout
        self._fetcher = fetcher
        self._backend = backend
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._stats: dict[str, ScrapeStats] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe = None

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._fetcher is None:
            self._fetcher = make_fetcher(self._backend)
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

    def _stop_task(self, ep: Endpoint) -> None:
        task = self._tasks.pop(ep, None)
        if task is not None:
            task.cancel()
            # Forget the counters too: with pod churn, names of dead pods would pile up.
            self._stats.pop(ep.name, None)

    # ---- the loop ---------------------------------------------------------------------

    async def _run(self, ep: Endpoint, stats: ScrapeStats) -> None:
        # Spread the first scrapes over one interval so N loops do not fire in lockstep.
        await asyncio.sleep(random.random() * self.interval)
        url = ep.metrics_url
        while True:
            started = time.monotonic()
            await self._scrape_once(ep, url, stats)
            stats.last_duration = elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.interval - elapsed))

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
        except FetchError as e:  # the server answered, only not with a page: it is alive
            ep.reach.scrape_failures = 0
            self._fail(ep, stats, str(e))
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
            ep.metrics = dataclasses.replace(ep.metrics, **fields)
            stats.ok += 1
            stats.last_error = "; ".join(errors)
            if errors:
                self._log(ep, stats, stats.last_error)
        else:
            self._fail(ep, stats, "; ".join(errors) or "no metrics in page")

    def _fail(self, ep: Endpoint, stats: ScrapeStats, why: str) -> None:
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
            "scrape %s (%s): %s [%d similar suppressed]", ep.name, ep.metrics_url, why, stats._suppressed
        )
        stats._last_log = now
        stats._suppressed = 0

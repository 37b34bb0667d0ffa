"""How saturated a set of endpoints is: the reference's two detectors, as arithmetic.

The plugins that configure them (`utilization-detector`, `concurrency-detector`) live with the
filters in scheduling/plugins/filters.py, because the reference makes each one a filter too;
flow control and legacy admission read the numbers from here.

>= 1.0 means saturated. An empty pool is saturated (1.0): requests wait for an endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from epp.datalayer.endpoint import Endpoint


class Detector(Protocol):
    def saturation(self, endpoints: Sequence[Endpoint], now: float | None = None, backlog: bool = False) -> float:
        """`backlog`: the reading gates dispatch from a queue, not a new arrival's fast path."""
        ...

    def step(self, n: int) -> float | None:
        """The most one more pick can raise the reading over `n` endpoints (None: unknown)."""
        ...


def unseen_picks(e: Endpoint) -> int:
    """Requests sent to `e` after its last scraped page and still without a first byte: in the
    server's queue, or about to be, but in no page yet. Counting them is what lets flow control
    dispatch a backlog one request at a time against a 50 ms-old page, instead of all at once."""
    return min(e.inflight.picks - e.metrics.picks_seen, e.inflight.prefill_requests)


def _unanswering(e: Endpoint) -> bool:
    r = e.reach
    return r.scrape_failures > 0 or r.request_failures > 0


@dataclass(frozen=True, slots=True)
class UtilizationDetector:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    staleness: float = 0.2  # seconds; older metrics count as fully saturated
    # The reference reads only the page. True (flow control) judges a server without a fresh
    # page that still answers by the EPP's own counts, and while a backlog is dispatched adds
    # `unseen_picks` to each queue: a 50 ms-old page must not release the whole backlog at
    # once. A new arrival with nobody waiting ahead of it is judged by the page alone, as the
    # reference judges it: requests the EPP sent a moment ago and that have no first byte yet
    # are mostly being prefilled, not queued, and counting them held short requests to a fast
    # server in the EPP for nothing (bench/results/overhead-flowcontrol.md).
    count_unseen: bool = False

    def saturation(self, endpoints: Sequence[Endpoint], now: float | None = None, backlog: bool = False) -> float:
        """Mean over endpoints of max(queue/threshold, kv/threshold); stale or never-scraped = 1.0."""
        if not endpoints:
            return 1.0
        now = time.monotonic() if now is None else now
        q, kv, stale, unseen = (
            self.queue_depth_threshold,
            self.kv_cache_util_threshold,
            self.staleness,
            self.count_unseen,
        )
        queue_unseen = unseen and backlog
        # When no server answers its scrapes, that says more about the monitoring than about
        # load: fail open (as the reachability filter does) and judge them all by our counts.
        trust_down = unseen and not all(_unanswering(e) for e in endpoints)
        total = 0.0
        # One pass with everything inlined (EndpointMetrics.stale, unseen_picks): flow control
        # reads this on arrivals, and in a pool of 1,000 endpoints it is a loop of 1,000.
        for e in endpoints:
            m = e.metrics
            seen = m.update_time
            if seen == 0.0 or now - seen > stale + m.interval_stretch:
                if unseen and not (trust_down and _unanswering(e)):
                    # No fresh page from a server that answers (not scraped yet, a page we cannot
                    # read): judge it by what the EPP itself sent it that has not started. The
                    # reference counts it as full, so a broken metrics page stops all dispatch.
                    total += e.inflight.prefill_requests / q
                else:
                    total += 1.0
                continue
            waiting = m.waiting_queue_size
            if queue_unseen:
                f = e.inflight
                picked = f.picks - m.picks_seen
                waiting += picked if picked < f.prefill_requests else f.prefill_requests
            a, b = waiting / q, m.kv_cache_usage_percent / kv
            total += a if a > b else b
        return total / len(endpoints)

    def step(self, n: int) -> float | None:
        # One pick is one more unseen request on one endpoint; the page itself moves only
        # with a scrape, which drops the cached reading. Without unseen counting, nothing.
        return 1.0 / (self.queue_depth_threshold * n) if n else None


@dataclass(frozen=True, slots=True)
class ConcurrencyDetector:
    """EPP-local: what this EPP has in flight over what the endpoints can take. Exact and
    instant (no scrape lag), blind to traffic that reaches the servers some other way."""

    mode: str = "requests"  # or "tokens" (uncached prompt tokens in flight)
    max_concurrency: int = 100
    max_token_concurrency: int = 1_000_000

    def saturation(self, endpoints: Sequence[Endpoint], now: float | None = None, backlog: bool = False) -> float:
        if not endpoints:
            return 1.0
        if self.mode == "tokens":
            used = sum(e.inflight.prompt_tokens for e in endpoints)
            return used / (self.max_token_concurrency * len(endpoints))
        used = sum(e.inflight.requests for e in endpoints)
        return used / (self.max_concurrency * len(endpoints))

    def step(self, n: int) -> float | None:
        if not n:
            return None
        if self.mode == "tokens":
            return None  # a pick adds its prompt tokens, unknown here
        return 1.0 / (self.max_concurrency * n)

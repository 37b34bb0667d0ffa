"""Which endpoints may receive picks: servers that answer, not ones that only look idle.

A dead server is the most attractive one to every scorer: its requests fail at once and
release their in-flight load, and its last metrics stay on display. So before any profile
runs, endpoints with evidence that their server is gone are left out of the candidates:

* scrapes: `scrape_failures` consecutive scrapes got no HTTP answer (refused, reset,
  timeout), or the last scrape failed and the last good one is older than `stale_after` (a
  server that hangs, or a page that stopped working). Old metrics alone are not enough: an
  EPP too busy to scrape on time would otherwise drop healthy servers. An endpoint never
  scraped yet is given the benefit of the doubt: it may be new, or export no metrics at all.
* requests: `request_failures` consecutive responses of 502/503/504 eject it for
  `ejection` seconds (a serving port that is dead while the metrics port answers). After
  the ejection it is on probation: one more such failure ejects it again, one success clears it.

If that leaves no candidate, all of them are kept (Envoy's panic mode, for the same reason):
a scrape path that is broken for every server says more about the EPP's network than about
the servers, and a 503 from the EPP would turn a monitoring fault into an outage.

Hot path: `usable()` runs once per request over the candidate list; the scraper (cold path)
and the response path write the counters it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint

FAILED_STATUSES = frozenset({502, 503, 504})


def stale_after(scrape_interval: float) -> float:
    """Metrics older than this mean the server stopped answering: a few missed scrapes, never under 1 s."""
    return max(1.0, 4.0 * scrape_interval)


@dataclass(slots=True)
class ReachabilityPolicy:
    stale_after: float = 1.0  # used when no scrape_interval is given
    # The scraper's current interval (it stretches with the pool size): staleness follows it.
    scrape_interval: Callable[[], float] | None = None
    scrape_failures: int = 2  # one refused scrape can be a reused keep-alive connection closing
    request_failures: int = 3
    ejection: float = 1.0

    def reachable(self, ep: Endpoint, now: float, stale: float | None = None) -> bool:
        r = ep.reach
        if r.scrape_failures >= self.scrape_failures:
            return False
        if r.ejected_until > now:
            return False
        if not r.last_scrape_failed:
            return True
        updated = ep.metrics.update_time
        return not (updated and now - updated > (self.stale_after if stale is None else stale))

    def current_stale_after(self) -> float:
        return stale_after(self.scrape_interval()) if self.scrape_interval is not None else self.stale_after

    def usable(self, endpoints: Sequence[Endpoint], now: float) -> Sequence[Endpoint]:
        """The reachable endpoints, or all of them when none is (see the module docstring)."""
        stale = self.current_stale_after()
        for i, ep in enumerate(endpoints):  # noqa: B007 - i is where the copy starts, below
            if not self.reachable(ep, now, stale):
                break
        else:
            return endpoints  # the common case: no copy
        kept = list(endpoints[:i])
        kept.extend(ep for ep in endpoints[i + 1 :] if self.reachable(ep, now, stale))
        return kept if kept else endpoints

    def request_finished(self, ep: Endpoint, status: int, now: float) -> None:
        """Response path: a response's status, or 0 when the stream ended without one."""
        r = ep.reach
        if status in FAILED_STATUSES:
            r.request_failures += 1
            if r.request_failures >= self.request_failures:
                r.ejected_until = now + self.ejection
                r.ejections += 1
                # Probation: the next failure after the ejection ejects it again at once.
                r.request_failures = self.request_failures - 1
        elif status:
            r.request_failures = 0
            r.ejections = 0

"""One scrape of one endpoint: fetch its metrics page, parse the families its engine needs,
and say what came of it — without touching the endpoint.

Both scrape loops run this: the one inside the EPP process (scraper.MetricsCollector) and the
one in the scrape process (scrapechild.py), whose results travel to the EPP as messages. What
an outcome does to an `Endpoint` (new metrics, reachability counters, logs) is decided in one
place on the EPP's side (scraper.CollectorBase.apply), so the two loops cannot drift apart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.engines import DEFAULT_ENGINE, WANTED, extract
from epp.datalayer.fetch import Fetcher, FetchError, PageTooLarge, TlsError
from epp.datalayer.promtext import parse_bytes

# What came of an attempt. The split matters to the candidate filter: only NO_ANSWER says the
# server may be gone; a server that answered with something unusable is alive.
OK = 0  # a page with at least one field we use (`fields`; `why` lists fields it lacked)
NO_ANSWER = 1  # timeout, connection refused or reset: nobody answered
ANSWERED = 2  # the server answered, only not with a page (status, size cap, TLS)
UNUSABLE = 3  # a page, but nothing usable in it (or the parser choked on it)

SCHEMES = ("http", "https")


@dataclass(slots=True)
class ScrapeResult:
    kind: int
    fields: dict[str, Any] = field(default_factory=dict)  # EndpointMetrics fields, when OK
    why: str = ""  # the problem, or the fields an OK page lacked ("" when clean)
    warn: bool = False  # a settings problem or a hostile server (TLS, size cap): worth a warning
    duration: float = 0.0  # seconds the attempt took


def scrape_url(metrics_url: str, scheme: str) -> str:
    """`metrics_url` (Endpoint builds it for http) with `scheme`."""
    return scheme + metrics_url[metrics_url.index("://") :]


async def scrape_once(fetcher: Fetcher, url: str, engine: str, timeout: float) -> ScrapeResult:
    try:
        # The fetcher's own timeout covers the connection; this one also bounds a server that
        # trickles bytes forever.
        async with asyncio.timeout(timeout):
            body = await fetcher.get(url, timeout)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return ScrapeResult(NO_ANSWER, why=f"timeout after {timeout:g}s")
    except FetchError as e:
        return ScrapeResult(ANSWERED, why=str(e), warn=isinstance(e, (TlsError, PageTooLarge)))
    except Exception as e:  # connection refused/reset, protocol errors: nobody answered
        return ScrapeResult(NO_ANSWER, why=f"{type(e).__name__}: {e}")
    try:
        families = parse_bytes(body, WANTED.get(engine) or WANTED[DEFAULT_ENGINE])
        fields, errors = extract(engine, families)
    except Exception as e:  # neither should raise; if one does, the loop must live on
        return ScrapeResult(UNUSABLE, why=f"parse: {type(e).__name__}: {e}")
    if not fields:
        return ScrapeResult(UNUSABLE, why="; ".join(errors) or "no metrics in page")
    return ScrapeResult(OK, fields, "; ".join(errors))


async def scrape_loop(
    fetcher: Fetcher,
    url: str,
    engine: str,
    timeout: float,
    interval: Callable[[], float],
    deliver: Callable[[ScrapeResult], Awaitable[None] | None],
) -> None:
    """Scrape `url` every `interval()` seconds until cancelled, handing each outcome to `deliver`.

    A slow scrape delays the next one instead of stacking them: the next starts one interval
    after the previous one started, or at once if it took longer. `interval` is re-read every
    round, so the schedule follows the scrape budget as the pool grows and shrinks."""
    # Spread the first scrapes over one interval so N loops do not fire in lockstep.
    await asyncio.sleep(random.random() * interval())
    while True:
        started = time.monotonic()
        result = await scrape_once(fetcher, url, engine, timeout)
        result.duration = elapsed = time.monotonic() - started
        delivered = deliver(result)
        if delivered is not None:
            await delivered
        await asyncio.sleep(max(0.0, interval() - elapsed))

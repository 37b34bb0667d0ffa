"""How often each endpoint is scraped, so that scraping stays within a CPU budget.

Every scrape costs the EPP's one event loop CPU (HTTP client, parse, extract) whatever the
pool size, so a fixed per-endpoint interval makes the total cost grow with the pool: 1,000
endpoints at the reference's 50 ms are 20,000 scrapes/s, more than a core can do, and picks
then queue behind scrapes (pick p50 2.2 s at 100 % CPU). Instead the pool's total scrape
rate is capped: each endpoint is scraped every

    effective_interval = max(--refresh-metrics-interval, endpoints / MAX_SCRAPES_PER_SECOND)

so small pools keep the configured interval and large ones stretch it just enough.

The cap. Per-scrape cost, measured with `python -m epp.datalayer.scrapebench` (aiohttp
backend, 55 KB vLLM pages from a child process on 127.0.0.1, this process's user+sys CPU
from getrusage over 6-8 s, 2-vCPU AMD EPYC shared with the page server, CPython 3.11,
2026-12-01): ~470-500 us at 32 endpoints, ~500-525 us at 1,000 (1,000 endpoints uncapped at
50 ms: one core saturated at ~2,900 scrapes/s, event-loop lag p50 233 ms). The cap itself
was set by pick latency, not CPU alone: with 1,000 static endpoints, a real EPP process and
an ext_proc client sending 40 picks/s (ad hoc, same machine, 400-1,000 picks per run),
pick p99 was 13-28 ms at 640 scrapes/s (~34 % of one core), 9-18 ms at 320 (~17 %), 9 ms
at 160, and 5-9 ms with no scraping at all (the spread is the shared machine's other load);
picks queue behind scrape callbacks on the one event loop. So 320/s: pools
up to 16 endpoints keep the configured interval (the reference's 50 ms), 32 endpoints get
100 ms, 1,000 endpoints 3.125 s.
"""

from __future__ import annotations

MAX_SCRAPES_PER_SECOND = 320.0


def effective_interval(floor: float, endpoints: int, max_scrapes_per_second: float) -> float:
    """Per-endpoint scrape interval: the configured floor, stretched so that `endpoints`
    scrapes per interval stay within `max_scrapes_per_second` (<= 0 means no cap)."""
    if floor <= 0:
        raise ValueError(f"scrape interval must be positive (got {floor})")
    if max_scrapes_per_second <= 0 or endpoints <= 0:
        return floor
    return max(floor, endpoints / max_scrapes_per_second)


def scrape_rate(interval: float, endpoints: int) -> float:
    """Scrapes per second the pool costs at that interval (the figure the cap bounds)."""
    return endpoints / interval if endpoints > 0 else 0.0

"""How often each endpoint is scraped, so that scraping stays within a CPU budget.

Every scrape costs the EPP's one event loop CPU (HTTP client, parse, extract) whatever the
pool size, so a fixed per-endpoint interval makes the total cost grow with the pool: 1,000
endpoints at the reference's 50 ms are 20,000 scrapes/s, more than a core can do, and picks
then queue behind scrapes (pick p50 2.2 s at 100 % CPU). Instead the pool's total scrape
rate is capped: each endpoint is scraped every

    effective_interval = max(--refresh-metrics-interval, endpoints / MAX_SCRAPES_PER_SECOND)

so small pools keep the configured interval and large ones stretch it just enough.

The cap, measured with `python -m epp.datalayer.scrapebench` (aiohttp backend, 55 KB vLLM
pages on 127.0.0.1, this process's user+sys CPU from getrusage over 6 s, 2-vCPU AMD EPYC,
CPython 3.11, 2026-11-23): a scrape costs ~470 us of CPU at 32 endpoints and ~500 us at
1,000 (fewer scrapes share an event-loop wake-up). 640 scrapes/s — the reference's 20/s for
32 endpoints, so every pool up to 32 endpoints keeps the configured interval — is then
~30-32 % of one core, leaving the loop about two thirds idle for picks. At 1,000 endpoints
the interval becomes 1.5625 s.
"""

from __future__ import annotations

MAX_SCRAPES_PER_SECOND = 640.0
SCRAPE_CPU_SECONDS = 500e-6  # measured per-scrape cost (above); for the docs and scrapebench's report


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

"""Stage `model-names`: clients choose model names; /metrics must stay small anyway.

Issue 13 found every distinct name adding ~23 KB to /metrics for good (2,000 names: 46.6 MB)
and one 1 MiB name making it 355 MB, even for names the server rejects. Through Envoy to an
epp-sim fleet: 2,000 requests with distinct names and one with a 1 MiB name. Bound: /metrics
under 2 MB.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import orjson

from epp.bench.reliability.stack import Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult

MAX_PAGE_BYTES = 2_000_000


async def _send(url: str, names: list[str], concurrency: int = 16) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = list(reversed(names))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:

        async def worker() -> None:
            while queue:
                name = queue.pop()
                body = orjson.dumps({"model": name, "prompt": "hi", "max_tokens": 1})
                try:
                    async with s.post(
                        url + "/v1/completions", data=body, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        statuses[r.status] += 1
                except aiohttp.ClientError:
                    statuses[0] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    n = 300 if cfg.quick else 2000
    res = StageResult("model-names", f"{n:,} distinct model names and one 1 MiB name")
    with Stack(workdir) as st:
        sims = st.sims(2)
        epp = st.epp(static_endpoints=sims.hostports)
        gw = st.envoy(epp)
        before = len(httpx.get(epp.metrics_url, timeout=30).content)
        statuses = asyncio.run(_send(gw.url, [f"client-model-{i}" for i in range(n)] + ["m" * (1 << 20)]))
        progress(f"model-names: sent {sum(statuses.values()):,} requests: {dict(statuses)}")
        t0 = time.monotonic()
        page = httpx.get(epp.metrics_url, timeout=60).content
        scrape_s = time.monotonic() - t0
    res.figure("answers (HTTP status: count)", ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items())))
    res.figure("/metrics before", f"{before / 1000:,.0f} KB")
    res.check("/metrics after", f"{len(page) / 1000:,.0f} KB", "< 2 MB", len(page) < MAX_PAGE_BYTES)
    res.figure("time to scrape it", f"{scrape_s * 1000:.0f} ms")
    res.check(
        "the 1 MiB name appears on the page", "yes" if b"m" * 1000 in page else "no", "no", b"m" * 1000 not in page
    )
    return res

"""Routing behaviour through real Envoy: load the EPP creates itself is seen before any scrape."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.e2e.conftest import MODEL

EXTRA: tuple[str, ...] = ()
SYSTEM = "You are a careful assistant. " * 60


# Long enough (256 tokens, real time) that all 100 are in flight together, as in a real burst.
async def burst(url: str, prompts: list[str]) -> Counter:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:
        rs = await asyncio.gather(
            *(
                c.post(
                    f"{url}/v1/completions", json={"model": MODEL, "prompt": p, "max_tokens": 256, "ignore_eos": True}
                )
                for p in prompts
            )
        )
    assert [r.status_code for r in rs] == [200] * len(prompts)
    return Counter(r.headers["x-inference-pod"] for r in rs)


@pytest.mark.parametrize("shared", [False, True], ids=["distinct-prompts", "one-shared-prompt"])
def test_burst_of_100_spreads_over_an_idle_fleet(sim_fleet, epp_server, envoy, shared):
    fleet = sim_fleet(8, time_scale="1.0")
    epp = epp_server(fleet.hostports, *EXTRA)
    gw = envoy("original-dst", epp)
    prompts = [SYSTEM + ("Same question?" if shared else f"Question number {i}?") for i in range(100)]
    share = asyncio.run(burst(gw.url, prompts))
    assert len(share) == 8, share
    assert max(share.values()) <= 25, share
    # Every pick was released when its response ended: nothing leaks.
    inflight = [line for line in epp.metrics().splitlines() if line.startswith("epp_endpoint_inflight_requests{")]
    assert len(inflight) == 8 and all(line.endswith(" 0.0") for line in inflight), inflight

"""Metrics auth: when it is enforced, and how long review answers are kept (the e2e test covers the wire)."""

from __future__ import annotations

import asyncio

import pytest

from epp.observability import metricsauth as ma
from epp.options import Options


@pytest.mark.parametrize(
    "opts,enforced,warns",
    [
        (Options(static_endpoints="h:1"), False, True),
        (Options(static_endpoints="h:1", metrics_endpoint_auth=False), False, False),
        (Options(static_endpoints="h:1", metrics_endpoint_auth=True), True, False),
        (Options(pool_name="p"), True, False),
        (Options(endpoint_selector="app=x"), True, False),
        (Options(pool_name="p", metrics_endpoint_auth=False), False, False),
    ],
)
def test_when_auth_is_enforced(opts, enforced, warns):
    enforce, warning = ma.metrics_auth_decision(opts)
    assert enforce is enforced and (warning is not None) is warns


class CountingReviewer:
    """Answers like an API server and counts what it was asked (the cache is what is under test)."""

    def __init__(self) -> None:
        self.token_calls = self.access_calls = 0
        self.allowed = True

    def token_review(self, token: str):
        self.token_calls += 1
        return ma.User("prometheus") if token == "good" else None

    def access_review(self, user, verb, path):
        self.access_calls += 1
        return self.allowed


async def test_answers_live_as_long_as_the_references_and_concurrent_reviews_are_shared():
    now = [0.0]
    reviewer = CountingReviewer()
    auth = ma.MetricsAuth(reviewer, clock=lambda: now[0])
    try:
        users = await asyncio.gather(*(auth.authenticate("good") for _ in range(20)))
        assert all(u == ma.User("prometheus") for u in users) and reviewer.token_calls == 1
        assert await auth.authorize(users[0], "get", "/metrics") and reviewer.access_calls == 1
        now[0] += ma.TOKEN_TTL - 1
        await auth.authenticate("good")
        assert reviewer.token_calls == 1
        now[0] += 2  # past the token lifetime: reviewed again; the allow answer (5 min) still holds
        await auth.authenticate("good")
        await auth.authorize(users[0], "get", "/metrics")
        assert (reviewer.token_calls, reviewer.access_calls) == (2, 1)
        now[0] += ma.ALLOW_TTL
        reviewer.allowed = False
        assert not await auth.authorize(users[0], "get", "/metrics")
        now[0] += ma.DENY_TTL - 1
        reviewer.allowed = True
        assert not await auth.authorize(users[0], "get", "/metrics")  # a denial is kept 30 s
        now[0] += 2
        assert await auth.authorize(users[0], "get", "/metrics")
    finally:
        auth.close()


def test_the_cache_is_bounded():
    cache = ma._TTLCache(3, lambda: 0.0)
    for i in range(10):
        cache.put(i, i, 60)
    assert [cache.get(i)[0] for i in range(10)] == [False] * 7 + [True] * 3

"""Pool scale in virtual time: the per-server shape is held as the pool grows, the warm stages of
one trace are reported apart, and no request is lost or beats its floor."""

from __future__ import annotations

from epp.bench import ladder, poolscale


def test_a_larger_pool_gets_proportionally_more_groups_at_the_same_resident_share():
    small = ladder.stage_workload("shared-prefix", 1, 1, 40, replicas=8)
    large = ladder.stage_workload("shared-prefix", 1, 1, 40, replicas=32)
    assert small.params["groups"] == 24 and large.params["groups"] == 96
    assert small.params["resident_share"] == large.params["resident_share"]


def test_stages_of_one_warm_trace_are_reported_apart_and_above_their_floor():
    opts = poolscale.ScaleOptions(
        sizes=(8,), routers=("epp", "envoy-rr"), loads=(0.5, 1.1), stage_requests_per_8=40, warmup_requests_per_8=30
    )
    rows = poolscale.run(opts, progress=lambda _: None)
    assert [(r["router"], r["stage"]) for r in rows] == [
        ("epp", "s1"),
        ("epp", "s2"),
        ("envoy-rr", "s1"),
        ("envoy-rr", "s2"),
    ]
    for r in rows:
        assert r["requests"] == 40 and r["success_rate"] == 1.0, r
        assert r["ttft_p90"] >= r["floor_p90"] - 1e-3, r  # no router beats the floor of its prompts
    text = poolscale.render(rows, opts, [], 1.0)
    assert "| 8 | epp |" in text and "| s2 | n/a |" in text

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


def test_the_report_names_each_pair_virtual_time_orders_otherwise_than_live():
    opts = poolscale.ScaleOptions(sizes=(8, 32), routers=("epp", "envoy-lr", "envoy-rr"), loads=(0.5,))

    def row(n, router, excess):
        return {"replicas": n, "stage": "s1", "router": router, "excess_p90": excess}

    live = [
        {"shape": "shared-prefix", "stage": "s1", "router": r, "excess_p90": x}
        for r, x in (("epp", 0.1), ("envoy-lr", 1.0), ("envoy-rr", 2.0))
    ]
    rows = [row(8, "epp", 0.1), row(8, "envoy-lr", 1.0), row(8, "envoy-rr", 1.5)]  # as live
    rows += [row(32, "epp", 0.2), row(32, "envoy-lr", 4.2), row(32, "envoy-rr", 4.0)]  # rr, lr swapped
    notes = poolscale.order_differences(rows, live, opts)
    assert notes == ["s1, 32 replicas: envoy-rr +4.000 s before envoy-lr +4.200 s (5% apart; live has envoy-lr first)"]

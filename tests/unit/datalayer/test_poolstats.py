from __future__ import annotations

from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.datalayer.poolstats import PoolStats, pool_stats


def _ep(name: str, updated: float, q: int, r: int, kv: float) -> Endpoint:
    e = Endpoint(name=name, address="10.0.0.1", port=1)
    e.metrics = EndpointMetrics(
        waiting_queue_size=q, running_requests_size=r, kv_cache_usage_percent=kv, update_time=updated
    )
    return e


def test_averages_over_fresh_only_per_pod_over_all():
    now = 100.0
    eps = [
        _ep("fresh1", 99.0, 2, 4, 0.2),
        _ep("fresh2", 98.0, 4, 8, 0.6),  # exactly at the threshold: fresh
        _ep("stale", 90.0, 100, 100, 1.0),
        _ep("never", 0.0, 0, 0, 0.0),
    ]
    s = pool_stats(eps, staleness_threshold=2.0, now=now)
    assert s.ready == 2
    assert abs(s.avg_kv - 0.4) < 1e-9 and s.avg_queue == 3.0 and s.avg_running == 6.0
    assert s.per_pod_queue == {"fresh1": 2, "fresh2": 4, "stale": 100, "never": 0}


def test_nothing_fresh():
    s = pool_stats([_ep("stale", 1.0, 5, 5, 0.5)], 2.0, 100.0)
    assert s == PoolStats(per_pod_queue={"stale": 5})
    assert pool_stats([], 2.0, 0.0) == PoolStats()

"""How saturated a set of endpoints is (reference `utilization-detector`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from epp.datalayer.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class UtilizationDetector:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    staleness: float = 0.2  # seconds; older metrics count as fully saturated

    def saturation(self, endpoints: list[Endpoint], now: float | None = None) -> float:
        """Mean over endpoints of max(queue/threshold, kv/threshold); >= 1.0 means saturated."""
        if not endpoints:
            return 1.0
        now = time.monotonic() if now is None else now
        total = 0.0
        for e in endpoints:
            m = e.metrics
            if m.stale(self.staleness, now):
                total += 1.0
                continue
            total += max(m.waiting_queue_size / self.queue_depth_threshold,
                         m.kv_cache_usage_percent / self.kv_cache_util_threshold)
        return total / len(endpoints)

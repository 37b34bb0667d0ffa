"""Where the EPP sent its picks, read from its own counter.

`inference_extension_scheduler_attempts_total{status="success", port=...}` is bumped once per
routed request, labelled with the chosen endpoint; the difference between two readings is the
picks each endpoint got in between, whether or not the server behind it ever answered.
"""

from __future__ import annotations

from collections import Counter

import httpx
from prometheus_client.parser import text_string_to_metric_families

ATTEMPTS = "inference_extension_scheduler_attempts"


def picks_by_port(metrics_text: str) -> Counter[int]:
    out: Counter[int] = Counter()
    for family in text_string_to_metric_families(metrics_text):
        if family.name != ATTEMPTS:
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("status") == "success" and s.labels.get("port"):
                out[int(s.labels["port"])] += int(s.value)
    return out


def read_picks(metrics_url: str, timeout: float = 10.0) -> Counter[int]:
    return picks_by_port(httpx.get(metrics_url, timeout=timeout).text)


async def read_picks_async(client: httpx.AsyncClient, metrics_url: str) -> Counter[int]:
    r = await client.get(metrics_url)
    r.raise_for_status()
    return picks_by_port(r.text)


def since(now: Counter[int], before: Counter[int]) -> Counter[int]:
    return Counter({p: now[p] - before.get(p, 0) for p in now if now[p] - before.get(p, 0) > 0})


def sample_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a metric's samples (optionally only those with these labels); 0 when absent."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total

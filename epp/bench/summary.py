"""Turn per-request samples into one result point (the JSON row the report is built from).

Latencies are reported in simulated seconds (wall seconds / time scale): what the same fleet of
real servers would show. Shared by the live harness and the virtual-time mode.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), None for no data."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(slots=True)
class Outcome:
    """One request as both modes see it (seconds of simulated time)."""

    ok: bool
    start: float
    ttft: float | None
    e2e: float | None
    itls: list[float]
    output_tokens: int
    pod: str


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def summarize(
    outcomes: Iterable[Outcome],
    *,
    router: str,
    workload: str,
    qps: float,
    load: float | None,
    servers: list[str],
    prefix_hits: float | None,
    prefix_queries: float | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    outs = list(outcomes)
    ok = [o for o in outs if o.ok]
    ttfts = [o.ttft for o in ok if o.ttft is not None]
    itls = [g for o in ok for g in o.itls]
    e2es = [o.e2e for o in ok if o.e2e is not None]
    window = 0.0
    if ok:
        window = max(o.start + (o.e2e or 0.0) for o in ok) - min(o.start for o in outs)
    out_tokens = sum(o.output_tokens for o in ok)
    share = Counter(o.pod for o in ok if o.pod)
    n_ok = max(len(ok), 1)
    row: dict[str, Any] = {
        "router": router,
        "workload": workload,
        "qps": round(qps, 3),
        "load": _r(load, 3),
        "requests": len(outs),
        "success_rate": round(len(ok) / len(outs), 4) if outs else 0.0,
        "ttft_p50": _r(percentile(ttfts, 50)),
        "ttft_p90": _r(percentile(ttfts, 90)),
        "ttft_p99": _r(percentile(ttfts, 99)),
        "itl_p50": _r(percentile(itls, 50), 5),
        "e2e_p90": _r(percentile(e2es, 90)),
        "output_tokens_per_s": round(out_tokens / window, 1) if window > 0 else 0.0,
        "prefix_cache_hit_rate": (
            round(prefix_hits / prefix_queries, 4) if prefix_hits is not None and prefix_queries else None
        ),
        "per_server_share": {s: round(share.get(s, 0) / n_ok, 4) for s in servers},
    }
    if extra:
        row.update(extra)
    return row

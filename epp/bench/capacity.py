"""Fleet capacity of a workload from epp-sim's cost model, so load points are fractions of it.

Capacity here is the request rate the fleet sustains when every prompt prefix that was seen
before is served from cache (ideal prefix reuse, infinite cache) and decode runs in batches of
`batch`. It is a property of the workload and the fleet, independent of any router: a cache-blind
router saturates well below it on shared-prefix workloads, an ideal router near it.
"""

from __future__ import annotations

from epp.bench.des import token_ids
from epp.bench.workloads import MODEL, Workload
from epp.sim.costmodel import CostModel


def engine_seconds_per_request(w: Workload, cost: CostModel | None = None, batch: int = 16, block: int = 16) -> float:
    cost = cost or CostModel()
    seen: set[int] = set()
    total = 0.0
    for r in w.requests:
        ids = token_ids(r)
        h, cached = hash(r.model), 0
        for start in range(0, len(ids) - len(ids) % block, block):
            h = hash((h, tuple(ids[start : start + block])))
            if h in seen:
                cached = start + block
            else:
                seen.add(h)
        cached = min(cached, len(ids) - 1)  # the last prompt token is always recomputed
        new = len(ids) - cached
        ms = (
            cost.prefill_ms_per_token * new
            + cost.prefill_attn_ms_per_pair * new * (cached + new / 2)
            + (cost.lora_overhead_ms if r.model != MODEL else 0.0)
        )
        ctx = len(ids) + r.max_tokens / 2
        ms += r.max_tokens * (cost.step_overhead_ms / batch + cost.decode_ms_per_seq + cost.kv_read_ms_per_token * ctx)
        total += ms / 1000.0
    return total / max(len(w.requests), 1)


def fleet_capacity(w: Workload, cost: CostModel | None = None) -> float:
    """Requests per simulated second the whole fleet can serve."""
    return w.fleet.replicas / engine_seconds_per_request(w, cost)

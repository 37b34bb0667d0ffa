"""The TTFT p90 no router can beat on a workload: what the cost model makes unavoidable.

A request's first token needs at least its frontend latency, one engine step's overhead and the
prefill of every prompt token that no earlier request could have left in a cache: a server can
only hold what some request sent before this one computed (epp-bench sends requests in list
order, live and in virtual time, and every load point has fresh prompts, so nothing from an
earlier point helps), and a prompt always recomputes its last token. On an idle
server that is exactly its TTFT; queueing, batching with other work and chunking only add to it.
The p90 of these per-request floors (same percentile as the results) bounds every router's TTFT
p90 from below, at any load. On shared-prefix one request in five starts a prompt group nobody
holds yet, so the floor is the idle TTFT of a cold 4,800-token prompt.
"""

from __future__ import annotations

from epp.bench.summary import percentile
from epp.bench.workloads import MODEL, Workload
from epp.sim.costmodel import CostModel


def request_floors(workload: Workload, token_ids: list[list[int]], cost: CostModel | None = None,
                   block_size: int = 16) -> list[float]:
    """Per request, the lowest TTFT any router and server could give it (seconds)."""
    cost = cost or CostModel()
    seen: set[int] = set()
    floors = []
    for req, ids in zip(workload.requests, token_ids):
        # Prefix-cache keys chain every full block to the blocks before it, per model/adapter.
        chain, keys = hash(req.model), []
        for start in range(0, len(ids) - len(ids) % block_size, block_size):
            chain = hash((chain, tuple(ids[start:start + block_size])))
            keys.append(chain)
        reusable = 0
        limit = (len(ids) - 1) // block_size  # the last prompt token is always computed
        while reusable < limit and keys[reusable] in seen:
            reusable += 1
        seen.update(keys)
        cached = reusable * block_size
        new = len(ids) - cached
        floors.append(cost.frontend_latency + cost.step_seconds(
            new, new * (cached + new / 2), 0, 0, req.model != MODEL, 0))
    return floors


def ttft_p90_floor(workload: Workload, token_ids: list[list[int]], cost: CostModel | None = None) -> float:
    p90 = percentile(request_floors(workload, token_ids, cost), 90)
    assert p90 is not None, "a workload without requests has no floor"
    return p90

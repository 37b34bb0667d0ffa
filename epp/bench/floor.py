"""The TTFT p90 no router can beat on a workload: what the cost model makes unavoidable.

A request's first token needs at least its frontend latency, one engine step's overhead and the
prefill of every prompt token that no earlier request could have left in a cache: a server can
only hold what some request sent before this one computed (epp-bench sends requests in list
order, live and in virtual time; on a warm ladder `FloorState` carries every prefix earlier stages
sent, so a warmed system prompt costs only its question), and a prompt always recomputes its last token. On an idle
server that is exactly its TTFT; queueing, batching with other work and chunking only add to it.
The p90 of these per-request floors (same percentile as the results) bounds every router's TTFT
p90 from below, at any load. On shared-prefix one request in five starts a prompt group nobody
holds yet, so the floor is the idle TTFT of a cold 4,800-token prompt.
"""

from __future__ import annotations

from epp.bench.summary import percentile
from epp.bench.workloads import MODEL, Workload
from epp.sim.costmodel import CostModel


class FloorState:
    """The prefixes some earlier request has sent, carried across the stages of a warm ladder: a
    server may still hold any of them (infinite cache, the floor's best case)."""

    def __init__(self, cost: CostModel | None = None, block_size: int = 16) -> None:
        self.cost = cost or CostModel()
        self.block_size = block_size
        self.seen: set[int] = set()

    def advance(self, requests: list, token_ids: list[list[int]]) -> list[float]:
        """Per request in arrival order, the lowest TTFT any router and server could give it (seconds)."""
        bs = self.block_size
        floors = []
        for req, ids in zip(requests, token_ids, strict=True):
            # Prefix-cache keys chain every full block to the blocks before it, per model/adapter.
            chain, keys = hash(req.model), []
            for start in range(0, len(ids) - len(ids) % bs, bs):
                chain = hash((chain, tuple(ids[start : start + bs])))
                keys.append(chain)
            reusable = 0
            limit = (len(ids) - 1) // bs  # the last prompt token is always computed
            while reusable < limit and keys[reusable] in self.seen:
                reusable += 1
            self.seen.update(keys)
            cached = reusable * bs
            new = len(ids) - cached
            floors.append(
                self.cost.frontend_latency
                + self.cost.step_seconds(new, new * (cached + new / 2), 0, 0, req.model != MODEL, 0)
            )
        return floors


def decode_floor(prompt_tokens: int, output_tokens: int, lora: bool, cost: CostModel | None = None) -> float:
    """Lowest time from a request's first token to its last (seconds): every further token takes
    one engine step, and a step that decodes it costs at least decoding it alone (the step
    overhead, one sequence, reading its KV: the prompt and the tokens before it)."""
    cost = cost or CostModel()
    steps = output_tokens - 1
    if steps <= 0:
        return 0.0
    per_step = cost.step_overhead_ms + cost.decode_ms_per_seq + (cost.lora_overhead_ms if lora else 0.0)
    kv_read = steps * prompt_tokens + steps * (steps - 1) / 2  # the j-th step reads prompt + j - 1
    return (per_step * steps + cost.kv_read_ms_per_token * kv_read) * cost.slowdown / 1000.0


def throughput_ceiling(
    requests: list,
    token_ids: list[list[int]],
    floors: list[float],
    arrivals: list[float],
    cost: CostModel | None = None,
) -> float:
    """Output tokens per second no router can exceed on these requests arriving at `arrivals`
    (simulated seconds), measured over the first arrival to the last completion."""
    end = max(
        a + f + decode_floor(len(ids), r.max_tokens, r.model != MODEL, cost)
        for r, ids, f, a in zip(requests, token_ids, floors, arrivals, strict=True)
    )
    return sum(r.max_tokens for r in requests) / (end - min(arrivals))


def request_floors(
    workload: Workload, token_ids: list[list[int]], cost: CostModel | None = None, block_size: int = 16
) -> list[float]:
    """Per request, the lowest TTFT any router and server could give it (seconds), from a cold start."""
    return FloorState(cost, block_size).advance(workload.requests, token_ids)


def ttft_p90_floor(workload: Workload, token_ids: list[list[int]], cost: CostModel | None = None) -> float:
    p90 = percentile(request_floors(workload, token_ids, cost), 90)
    assert p90 is not None, "a workload without requests has no floor"
    return p90

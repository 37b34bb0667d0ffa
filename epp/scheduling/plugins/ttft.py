"""`estimated-ttft-scorer` (this project's own): pick the endpoint that will answer first.

Estimate, in prompt-token equivalents, the work standing between a new request and its first
token on each endpoint:

    cost(e) = pending_prefill(e)          uncached prompt tokens sent to e whose first byte is not back,
                                          plus those the prefill gate holds in the EPP for e
            + uncached(e)                 this request's prompt minus what e already holds (prefix match)
            + runningTokens * running(e)  each running sequence slows every engine step (and the
                                          new request's decode) a little
            + waitingTokens * waiting(e)  a request queued on the server waits for a free slot;
                                          only waiting requests beyond those the EPP itself sent and
                                          still counts as pending prefill (no double charge, and a
                                          scrape up to an interval old cannot starve an endpoint)
            + loraLoadTokens              when the request's LoRA adapter is not resident on e
                                          (x2 when e has no free adapter slot: it must evict first)

Prefix affinity is followed exactly while it pays: a cache-hot endpoint wins by `uncached`, and
loses as soon as the prefill queued on it costs more than the cache saves; a hot prefix then
spreads to a second endpoint, a third, and so on. The EPP's own in-flight counts make a burst
that arrives inside one scrape interval see the load it creates.

Score = min cost / cost, so the cheapest endpoint gets 1.0 and one twice as expensive 0.5.
"""

from __future__ import annotations

import math

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Category, Params, Scorer, register
from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY, PrefixMatchInfo
from epp.scheduling.types import CycleState, SchedulingRequest


class EstimatedTtftParams(Params):
    # ~1 prefill token per running sequence per step is pure TTFT; the output length would be
    # pure end-to-end latency. 32 caps how many more running sequences a cached prefix of P
    # tokens attracts (about P/32) without changing any benchmark workload (docs/routing.md).
    running_tokens: float = Field(32.0, alias="runningTokens", ge=0)
    waiting_tokens: float = Field(256.0, alias="waitingTokens", ge=0)
    kv_pressure_tokens: float = Field(8192.0, alias="kvPressureTokens", ge=0)
    kv_pressure_threshold: float = Field(0.9, alias="kvPressureThreshold", gt=0, le=1)
    lora_load_tokens: float = Field(1024.0, alias="loraLoadTokens", ge=0)
    # Computing uncached tokens also delays every later request on that endpoint and spends KV
    # on another copy of a prefix some endpoint already holds: weigh it above queued prefill...
    uncached_weight: float = Field(8.0, alias="uncachedWeight", ge=0)
    # ...unless the prefix is popular enough to deserve more copies than it has: then the
    # request is free to go wherever its first token comes soonest.
    replicate_uncached_weight: float = Field(1.0, alias="replicateUncachedWeight", ge=0)


def lora_cost(e: Endpoint, target: str, p: EstimatedTtftParams) -> float:
    m = e.metrics
    if m.max_active_models <= 0 or target in m.active_models:
        return 0.0
    if len(m.active_models) + len(m.waiting_models) < m.max_active_models:
        return p.lora_load_tokens
    return 2 * p.lora_load_tokens


def endpoint_costs(
    endpoints: list[Endpoint],
    tokens: int,
    matches: dict[str, int],
    block_size: int,
    p: EstimatedTtftParams,
    lora: str = "",
    uncached_weight: float = 1.0,
) -> list[float]:
    """cost(e) of the module docstring for every endpoint, `uncached` = the prompt's `tokens`
    minus what `matches` (endpoint name -> leading blocks held) says e holds.

    One loop over locals rather than a call per endpoint: this is most of what a pick costs in
    a large pool (about 0.5 us an endpoint; tests/unit/scheduling/test_ttft.py holds it to the
    formula written out endpoint by endpoint)."""
    running_tokens, waiting_tokens = p.running_tokens, p.waiting_tokens
    kv_threshold, kv_tokens = p.kv_pressure_threshold, p.kv_pressure_tokens
    kv_span = 1 - kv_threshold + 1e-9
    get = matches.get
    # Most endpoints hold none of the prompt: their uncached term is the same for all.
    whole = uncached_weight * (tokens if tokens > 0 else 0)
    out: list[float] = []
    append = out.append
    for e in endpoints:
        m = e.metrics
        f = e.inflight
        running = m.running_requests_size
        waiting = m.waiting_queue_size
        inflight = f.requests
        # Scraped counts lag; what we sent and have not seen finish is a floor on what the
        # server holds.
        if inflight > running + waiting:
            running = inflight - waiting
        # A scraped waiting request that is one we sent and have not seen start is already
        # charged as pending prefill; the scrape is also up to an interval old. Charge only
        # the excess.
        waiting -= f.prefill_requests
        if waiting < 0:
            waiting = 0
        held = get(e.name)
        if held is None:
            cost = f.prefill_tokens + f.held_tokens + whole + running_tokens * running + waiting_tokens * waiting
        else:
            uncached = tokens - held * block_size
            if uncached < 0:
                uncached = 0
            cost = (
                f.prefill_tokens
                + f.held_tokens
                + uncached_weight * uncached
                + running_tokens * running
                + waiting_tokens * waiting
            )
        if lora:
            cost += lora_cost(e, lora, p)
        kv = m.kv_cache_usage_percent
        if kv > kv_threshold:
            # Near-full KV means preemption and recomputation: steer away before it happens.
            cost += kv_tokens * (kv - kv_threshold) / kv_span
        append(cost)
    return out


def _serves_adapter(endpoints: list[Endpoint], target: str) -> bool:
    for e in endpoints:
        m = e.metrics
        if (m.active_models and target in m.active_models) or (m.waiting_models and target in m.waiting_models):
            return True
    return False


@register
class EstimatedTtftScorer(Scorer):
    type_name = "estimated-ttft-scorer"
    category = Category.BALANCE
    Params = EstimatedTtftParams
    scores_in_unit_range = True  # min cost / cost, or 1.0 / 0.0

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        tokens = req.prompt_tokens
        p = self.params
        # Only adapters some endpoint knows about cost a load; the base model never does.
        lora = req.target_model if _serves_adapter(endpoints, req.target_model) else ""
        if info is not None and info.matches:
            weight = self._uncached_weight(info, len(endpoints))
            costs = endpoint_costs(endpoints, tokens, info.matches, info.block_size_tokens, p, lora, weight)
        else:
            # Nobody holds any of it: every endpoint computes the whole prompt, plain TTFT decides.
            costs = endpoint_costs(endpoints, tokens, {}, 0, p, lora, 1.0)
        best = min(costs)
        if best <= 0:
            return [1.0 if c <= 0 else 0.0 for c in costs]
        return [best / c for c in costs]

    def _uncached_weight(self, info: PrefixMatchInfo, n: int) -> float:
        """Replicate a prefix while it has fewer holders than its share of traffic justifies."""
        p = self.params
        total = info.total_blocks
        holders = sum(1 for m in info.matches.values() if 2 * m >= total)
        wanted = max(1, math.ceil(info.popularity * n))
        return p.replicate_uncached_weight if holders < wanted else p.uncached_weight

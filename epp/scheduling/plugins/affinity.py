"""Affinity plugins: sessions, cold-request spreading, and the prefix-affinity gate."""

from __future__ import annotations

import base64
import random
from collections import OrderedDict

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Category, Filter, Params, PreRequest, Scorer, register
from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY, PrefixMatchInfo
from epp.scheduling.types import CycleState, SchedulingRequest, SchedulingResult

SESSION_HEADER = "x-session-token"


def session_token(e: Endpoint) -> str:
    name = f"{e.namespace}/{e.pod_name or e.name}" if e.namespace else (e.pod_name or e.name)
    return base64.b64encode(name.encode()).decode()


@register
class SessionAffinityScorer(Scorer, PreRequest):
    """The response carries `x-session-token` naming the pod; a request that sends it back scores that pod 1.0."""

    type_name = "session-affinity-scorer"
    category = Category.AFFINITY

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        token = req.headers.get(SESSION_HEADER)
        if not token:
            return [0.0] * len(endpoints)
        return [1.0 if session_token(e) == token else 0.0 for e in endpoints]

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        targets = result.targets
        if targets:
            result.response_headers.append((SESSION_HEADER, session_token(targets[0])))


class NoHitLruParams(Params):
    lru_size: int = Field(1024, alias="lruSize", gt=0)


@register
class NoHitLruScorer(Scorer, PreRequest):
    """Cold requests (no prefix hit anywhere) go to the endpoint that least recently took one,
    spreading new cache growth; warm requests get a neutral 0.5."""

    type_name = "no-hit-lru-scorer"
    category = Category.DISTRIBUTION
    Params = NoHitLruParams

    def __init__(self, name: str, params: NoHitLruParams) -> None:
        super().__init__(name, params)
        self.recent: OrderedDict[str, None] = OrderedDict()  # least recent first

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        if info is not None and info.matches:
            return [0.5] * len(endpoints)
        n = len(endpoints)
        if n == 1:
            return [1.0]
        # Never-used endpoints rank as least recent of all.
        order = {name: i for i, name in enumerate(self.recent)}
        ranks = [order.get(e.name, -1) for e in endpoints]
        ranked = sorted(range(n), key=lambda i: ranks[i])
        scores = [0.0] * n
        for pos, i in enumerate(ranked):
            scores[i] = 1.0 - pos / (n - 1)
        return scores

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        if info is not None and info.matches:
            return
        for t in result.targets[:1]:
            self.recent.pop(t.name, None)
            self.recent[t.name] = None
            while len(self.recent) > self.params.lru_size:
                self.recent.popitem(last=False)


class PrefixAffinityFilterParams(Params):
    affinity_threshold: float = Field(0.8, alias="affinityThreshold", ge=0, le=1)
    exploration_probability: float = Field(0.0, alias="explorationProbability", ge=0, le=1)
    max_ttft_penalty_ms: float = Field(18_000, alias="maxTTFTPenaltyMs", ge=0)
    ttft_source: str = Field("prefillThroughput", alias="ttftSource")
    peak_prefill_throughput: float = Field(15_928, alias="peakPrefillThroughput", gt=0)


@register
class PrefixCacheAffinityFilter(Filter):
    """Keep endpoints whose prefix match is at least the threshold ("sticky") unless the best
    warm endpoint's estimated TTFT exceeds the best cold one's by more than the penalty."""

    type_name = "prefix-cache-affinity-filter"
    Params = PrefixAffinityFilterParams

    def __init__(self, name: str, params: PrefixAffinityFilterParams) -> None:
        super().__init__(name, params)
        self.rng = random.Random()

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        p = self.params
        if info is None or not info.matches or info.total_blocks == 0:
            return endpoints
        if p.exploration_probability and self.rng.random() < p.exploration_probability:
            return endpoints
        total = info.total_blocks
        warm = [e for e in endpoints if info.matches.get(e.name, 0) / total >= p.affinity_threshold]
        if not warm or len(warm) == len(endpoints):
            return endpoints
        cold = [e for e in endpoints if e not in warm]

        def ttft_ms(e: Endpoint) -> float:
            uncached = max(0, req.prompt_tokens - info.matches.get(e.name, 0) * info.block_size_tokens)
            return (e.inflight.prefill_tokens + uncached) / p.peak_prefill_throughput * 1000

        if min(map(ttft_ms, warm)) - min(map(ttft_ms, cold)) > p.max_ttft_penalty_ms:
            return endpoints
        return warm

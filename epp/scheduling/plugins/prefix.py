"""Prefix-cache affinity: `approx-prefix-cache-producer` computes matches, `prefix-cache-scorer` scores them."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, model_validator

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Category, DataProducer, Params, PreRequest, ResponseComplete, Scorer, register
from epp.scheduling.plugins.prefix_index import PrefixIndex, block_hashes
from epp.scheduling.types import CycleState, SchedulingRequest, SchedulingResult

PREFIX_MATCH_KEY = "prefix-cache-match-info"
# Characters per token assumed when turning a token block size into a byte block size.
CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class PrefixMatchInfo:
    hashes: list[int]
    matches: dict[str, int]  # endpoint name -> matched blocks
    block_size_tokens: int
    popularity: float = 0.0  # share of in-flight requests that begin with this request's first block

    @property
    def total_blocks(self) -> int:
        return len(self.hashes)


class PrefixProducerParams(Params):
    auto_tune: bool = Field(True, alias="autoTune")
    block_size_tokens: int = Field(16, alias="blockSizeTokens", gt=0)
    max_prefix_blocks_to_match: int = Field(256, alias="maxPrefixBlocksToMatch", ge=0)
    max_prefix_tokens_to_match: int = Field(0, alias="maxPrefixTokensToMatch", ge=0)
    lru_capacity_per_server: int = Field(31250, alias="lruCapacityPerServer", gt=0)
    block_size: int | None = Field(None, alias="blockSize")  # deprecated: characters

    @model_validator(mode="after")
    def _deprecated_block_size(self) -> PrefixProducerParams:
        if self.block_size is not None and "block_size_tokens" not in self.model_fields_set:
            raise ValueError("blockSize (characters) is deprecated; set blockSizeTokens instead")
        return self


@register
class ApproxPrefixCacheProducer(DataProducer, PreRequest, ResponseComplete):
    type_name = "approx-prefix-cache-producer"
    Params = PrefixProducerParams

    def __init__(self, name: str, params: PrefixProducerParams) -> None:
        super().__init__(name, params)
        self.index = PrefixIndex(params.lru_capacity_per_server)
        self.popularity = PrefixPopularity()
        self.max_blocks = params.max_prefix_blocks_to_match
        if params.max_prefix_tokens_to_match > 0:
            self.max_blocks = params.max_prefix_tokens_to_match // params.block_size_tokens

    def _block_size(self, endpoints: list[Endpoint]) -> int:
        # The reference takes the first candidate's block size; a pool is normally homogeneous,
        # so any endpoint that reported one is as good and does not depend on candidate order.
        if self.params.auto_tune:
            for e in endpoints:
                if e.metrics.cache_block_size > 0:
                    return e.metrics.cache_block_size
        return self.params.block_size_tokens

    def produce(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> None:
        bs = self._block_size(endpoints)
        memo_key = (bs * CHARS_PER_TOKEN, self.max_blocks)
        memo = req.hash_memo
        hashes = memo.get(memo_key) if memo is not None else None
        if hashes is None:
            hashes = block_hashes(req.target_model, req.cache_salt, req.prefix_input, memo_key[0], self.max_blocks)
            if memo is None:
                memo = req.hash_memo = {}
            memo[memo_key] = hashes
        req.prefix_key = hashes[0] if hashes else 0
        cycle[PREFIX_MATCH_KEY] = PrefixMatchInfo(
            hashes,
            self.index.match(hashes) if hashes else {},
            bs,
            self.popularity.share(req.prefix_key, len(endpoints)),
        )

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        self.popularity.started(req.prefix_key)
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        if info is None or not info.hashes:
            return
        for profile in result.profile_results.values():
            if profile is None or not profile.targets:
                continue
            ep = profile.targets[0]
            cap = ep.metrics.cache_num_blocks if self.params.auto_tune else 0
            self.index.add(ep.name, info.hashes, cap)

    def response_complete(self, req: SchedulingRequest, result: SchedulingResult, usage: object) -> None:
        self.popularity.finished(req.prefix_key)

    def remove_endpoint(self, name: str) -> None:
        self.index.remove_endpoint(name)


class PrefixPopularity:
    """How much of the traffic in flight right now starts with a given first block.

    A prefix that a burst or a hot system prompt shares deserves as many copies as its share
    of the load; a prefix a handful of requests share deserves one. Counted at pick time,
    released when the response ends (or the stream aborts), so it follows demand as it moves.
    """

    def __init__(self) -> None:
        self.inflight: dict[int, int] = {}
        self.total = 0

    def share(self, key: int, endpoints: int) -> float:
        # With less in flight than endpoints, nothing is concentrated enough to replicate.
        return self.inflight.get(key, 0) / max(self.total, endpoints, 1)

    def started(self, key: int) -> None:
        self.total += 1
        if key:
            self.inflight[key] = self.inflight.get(key, 0) + 1

    def finished(self, key: int) -> None:
        self.total = max(0, self.total - 1)
        if key:
            n = self.inflight.get(key, 0) - 1
            if n > 0:
                self.inflight[key] = n
            else:
                self.inflight.pop(key, None)


@register
class PrefixCacheScorer(Scorer):
    type_name = "prefix-cache-scorer"
    category = Category.AFFINITY

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        if info is None or info.total_blocks == 0 or not info.matches:
            return [0.0] * len(endpoints)
        total = info.total_blocks
        m = info.matches
        return [m.get(e.name, 0) / total for e in endpoints]

"""Fairness policies: which flow (fairness id) of a band is served next.

`global-strict-fairness-policy` and `round-robin-fairness-policy` are the reference's; the
token one is llm-d's `program-aware-fairness` (least attained service): each fairness id is
charged the tokens it was served — prompt tokens at dispatch, then the real prompt and
output tokens from the response's usage — decayed with a half-life, so a tenant that sent a
burst an hour ago is not punished now. Dispatch turns are not fairness when one tenant asks
for 4,000-token prompts and another for 40 (GIE #1797).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from epp.flowcontrol.registry import Band, FlowQueue
from epp.scheduling.plugin import Params, Plugin, register


class FairnessPolicy(Plugin):
    def pick(self, band: Band, now: float) -> FlowQueue | None:
        raise NotImplementedError

    # Hooks for policies that count service (others ignore them).
    def dispatched(self, flow_id: str, prompt_tokens: int, now: float) -> None:
        pass

    def served(self, flow_id: str, prompt_delta: int, output_tokens: int, now: float) -> None:
        pass

    def sweep(self, now: float) -> None:
        pass


@register
class GlobalStrictFairness(FairnessPolicy):
    """No fairness: the band is one queue; the best head under the ordering policy goes."""

    type_name = "global-strict-fairness-policy"

    def pick(self, band: Band, now: float) -> FlowQueue | None:
        best, best_key = None, None
        for q in band.flows.values():
            if q.count == 0:
                continue
            k = q.head_key()
            if k is not None and (best_key is None or k < best_key):
                best, best_key = q, k
        return best


@register
class RoundRobinFairness(FairnessPolicy):
    """One dispatch per flow in turn, flows in a fixed (sorted) order, empty ones skipped."""

    type_name = "round-robin-fairness-policy"

    def pick(self, band: Band, now: float) -> FlowQueue | None:
        ids = band.flow_ids
        n = len(ids)
        if n == 0:
            return None
        start = 0
        if band.cursor is not None:
            import bisect

            start = bisect.bisect_right(ids, band.cursor)
        for i in range(n):
            fid = ids[(start + i) % n]
            q = band.flows[fid]
            if q.count > 0 and q.head() is not None:
                band.cursor = fid
                return q
        return None


class ProgramAwareParams(Params):
    strategy: Literal["las"] = "las"
    las_half_life_seconds: float = Field(60.0, alias="lasHalfLifeSeconds", gt=0)
    las_weight_service: float = Field(0.8, alias="lasWeightService", ge=0)
    las_weight_head_wait: float = Field(0.2, alias="lasWeightHeadWait", ge=0)
    eviction_ttl_seconds: float = Field(3600.0, alias="evictionTtlSeconds", gt=0)
    eviction_sweep_seconds: float = Field(300.0, alias="evictionSweepSeconds", gt=0)
    output_token_weight: float = Field(2.0, alias="outputTokenWeight", ge=0)  # llm-d: input + 2 x output
    weights: dict[str, float] = Field(default_factory=dict)  # ours: a flow's share (default 1)
    max_flows: int = Field(10_000, alias="maxFlows", ge=1)  # ours: bounded memory


class _Service:
    __slots__ = ("at", "value")

    def __init__(self, value: float, at: float) -> None:
        self.value, self.at = value, at


@register
class ProgramAwareFairness(FairnessPolicy):
    """Least attained service per fairness id, blended with how long the flow's head has waited.

    Score of a flow with queued requests = wS * (1 - s/s_max) + wH * (wait/wait_max), where s is
    its decayed service divided by its weight: the highest score goes. With wH = 0 it is pure LAS.
    """

    type_name = "program-aware-fairness"
    Params = ProgramAwareParams

    def __init__(self, name: str, params: ProgramAwareParams) -> None:
        super().__init__(name, params)
        if any(w <= 0 for w in params.weights.values()):
            raise ValueError("weights must be positive")
        self.decay = math.log(2) / params.las_half_life_seconds
        self.service: dict[str, _Service] = {}
        self._next_sweep = 0.0

    def attained(self, flow_id: str, now: float) -> float:
        s = self.service.get(flow_id)
        if s is None:
            return 0.0
        return s.value * math.exp(-self.decay * (now - s.at))

    def _charge(self, flow_id: str, tokens: float, now: float) -> None:
        s = self.service.get(flow_id)
        if s is None:
            if len(self.service) >= self.params.max_flows:
                self.sweep(now, force=True)
            self.service[flow_id] = _Service(max(0.0, tokens), now)
            return
        s.value = max(0.0, s.value * math.exp(-self.decay * (now - s.at)) + tokens)
        s.at = now

    def dispatched(self, flow_id: str, prompt_tokens: int, now: float) -> None:
        self._charge(flow_id, prompt_tokens, now)

    def served(self, flow_id: str, prompt_delta: int, output_tokens: int, now: float) -> None:
        self._charge(flow_id, prompt_delta + self.params.output_token_weight * output_tokens, now)

    def sweep(self, now: float, force: bool = False) -> None:
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + self.params.eviction_sweep_seconds
        ttl = self.params.eviction_ttl_seconds
        for fid in [f for f, s in self.service.items() if now - s.at >= ttl]:
            del self.service[fid]
        if force and len(self.service) >= self.params.max_flows:  # still full: drop the least served
            for fid, _ in sorted(self.service.items(), key=lambda kv: self.attained(kv[0], now))[
                : len(self.service) - self.params.max_flows + 1
            ]:
                del self.service[fid]

    def pick(self, band: Band, now: float) -> FlowQueue | None:
        p = self.params
        live: list[tuple[FlowQueue, float, float]] = []
        for q in band.flows.values():
            if q.count == 0:
                continue
            head = q.head()
            if head is None:
                continue
            s = self.attained(q.flow_id, now) / p.weights.get(q.flow_id, 1.0)
            live.append((q, s, max(0.0, now - head.enqueued)))
        if not live:
            return None
        if len(live) == 1:
            return live[0][0]
        s_max = max(x[1] for x in live) or 1.0
        w_max = max(x[2] for x in live) or 1.0
        best, best_score = None, -1.0
        for q, s, wait in live:
            score = p.las_weight_service * (1.0 - s / s_max) + p.las_weight_head_wait * (wait / w_max)
            if score > best_score:
                best, best_score = q, score
        return best

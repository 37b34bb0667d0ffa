"""Usage-limit policies: the saturation ceiling of each band (a band dispatches below it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from epp.scheduling.plugin import Params, Plugin, register


class UsageLimitPolicy(Plugin):
    def ceilings(self, priorities: list[int]) -> list[float]:
        """One ceiling per band, `priorities` highest first."""
        raise NotImplementedError


class StaticParams(Params):
    threshold: float = Field(1.0, gt=0, le=1)


@register
class StaticUsageLimit(UsageLimitPolicy):
    type_name = "static-usage-limit-policy"
    Params = StaticParams

    def ceilings(self, priorities: list[int]) -> list[float]:
        return [self.params.threshold] * len(priorities)


class HoldbackParams(Params):
    max_ceiling: float = Field(1.0, alias="maxCeiling", gt=0, le=1)
    min_ceiling: float = Field(alias="minCeiling", ge=0, lt=1)
    shape: Literal["linear"] = "linear"
    domain: Literal["rank", "value"] = "rank"

    @model_validator(mode="after")
    def _ordered(self) -> HoldbackParams:
        if self.min_ceiling > self.max_ceiling:
            raise ValueError("minCeiling must not exceed maxCeiling")
        return self


@register
class PriorityHoldback(UsageLimitPolicy):
    """Lower bands stop earlier: ceilings from `maxCeiling` (highest band) down to `minCeiling`
    (lowest), in equal steps by rank or in proportion to the numeric priority. Keeps headroom
    that only more important traffic can use."""

    type_name = "priority-holdback-policy"
    Params = HoldbackParams

    def ceilings(self, priorities: list[int]) -> list[float]:
        p = self.params
        n = len(priorities)
        if n <= 1:
            return [p.max_ceiling] * n
        span = p.max_ceiling - p.min_ceiling
        if p.domain == "rank":
            return [p.max_ceiling - span * i / (n - 1) for i in range(n)]
        hi, lo = priorities[0], priorities[-1]
        if hi == lo:
            return [p.max_ceiling] * n
        return [p.min_ceiling + span * (pr - lo) / (hi - lo) for pr in priorities]

"""Pickers: turn weighted scores into the target endpoint list (first = primary, rest = fallbacks)."""

from __future__ import annotations

import random

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Params, Picker, register
from epp.scheduling.types import CycleState, SchedulingRequest


class PickerParams(Params):
    max_num_of_endpoints: int = Field(1, alias="maxNumOfEndpoints")


class _Picker(Picker):
    Params = PickerParams

    def __init__(self, name: str, params: PickerParams) -> None:
        super().__init__(name, params)
        self.n = max(1, params.max_num_of_endpoints)
        self.rng = random.Random()


@register
class MaxScorePicker(_Picker):
    type_name = "max-score-picker"

    def pick(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint], scores: list[float]):
        if self.n == 1:
            best = max(scores)
            if scores.count(best) == 1:  # the usual case, without building the tie list
                return [endpoints[scores.index(best)]]
            ties = [e for e, s in zip(endpoints, scores, strict=True) if s == best]
            return [self.rng.choice(ties)]
        order = list(range(len(endpoints)))
        self.rng.shuffle(order)  # random tie-break, then a stable sort keeps it
        order.sort(key=lambda i: -scores[i])
        return [endpoints[i] for i in order[: self.n]]


@register
class RandomPicker(_Picker):
    type_name = "random-picker"

    def pick(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint], scores: list[float]):
        return self.rng.sample(endpoints, min(self.n, len(endpoints)))


@register
class WeightedRandomPicker(_Picker):
    type_name = "weighted-random-picker"

    def pick(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint], scores: list[float]):
        if not any(s > 0 for s in scores):
            return self.rng.sample(endpoints, min(self.n, len(endpoints)))
        # A-Res (Efraimidis-Spirakis): key = U^(1/w), keep the n largest keys.
        keys = [(self.rng.random() ** (1.0 / s) if s > 0 else 0.0, i) for i, s in enumerate(scores)]
        keys.sort(reverse=True)
        return [endpoints[i] for _, i in keys[: self.n]]

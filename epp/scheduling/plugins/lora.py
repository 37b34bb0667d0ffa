"""LoRA adapter affinity (reference `lora-affinity-scorer`)."""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Category, Scorer, register
from epp.scheduling.types import CycleState, SchedulingRequest


def lora_affinity(target: str, active: frozenset[str], waiting: frozenset[str], max_active: int) -> float:
    if target in active:
        return 1.0
    if len(active) + len(waiting) < max_active:
        return 0.8
    if target in waiting:
        return 0.6
    return 0.0


@register
class LoraAffinityScorer(Scorer):
    type_name = "lora-affinity-scorer"
    category = Category.AFFINITY

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        t = req.target_model
        return [
            lora_affinity(t, e.metrics.active_models, e.metrics.waiting_models, e.metrics.max_active_models)
            for e in endpoints
        ]

"""InferenceModelRewrite rules: exact model matches over generic ones, oldest rule first, weighted targets.

Precedence as the reference's modelrewritestore: exact matches beat generic (match-everything)
rules; among several, the oldest object wins (then its name), and within one object its list
order (`min` keeps the first of equals, and rules are stored in list order).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WeightedTarget:
    model: str
    weight: int = 1


@dataclass(frozen=True, slots=True)
class RewriteRule:
    name: str  # the InferenceModelRewrite object's name
    created: float  # creation timestamp: older rules win ties
    targets: tuple[WeightedTarget, ...]
    match_model: str | None = None  # None = generic (matches every model)


@dataclass
class RewriteStore:
    rules: dict[str, list[RewriteRule]] = field(default_factory=dict)  # by object name
    rng: random.Random = field(default_factory=random.Random)

    def replace(self, name: str, rules: list[RewriteRule]) -> None:
        if rules:
            self.rules[name] = rules
        else:
            self.rules.pop(name, None)

    def lookup(self, model: str) -> tuple[str, str] | None:
        """(rule name, target model) for an incoming model, or None."""
        if not self.rules:
            return None
        exact = [r for rs in self.rules.values() for r in rs if r.match_model == model]
        pool = exact or [r for rs in self.rules.values() for r in rs if r.match_model is None]
        if not pool:
            return None
        rule = min(pool, key=lambda r: (r.created, r.name))
        return rule.name, self._choose(rule.targets)

    def _choose(self, targets: tuple[WeightedTarget, ...]) -> str:
        total = sum(max(0, t.weight) for t in targets)
        if total <= 0:  # no weights given: uniform, as the reference's selectWeightedModel
            return targets[self.rng.randrange(len(targets))].model
        x = self.rng.random() * total
        for t in targets:
            x -= max(0, t.weight)
            if x < 0:
                return t.model
        return targets[-1].model

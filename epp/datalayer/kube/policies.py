"""InferenceObjective and InferenceModelRewrite objects -> the director's policy stores."""

from __future__ import annotations

import datetime as dt
from typing import Any

from epp.routing.objectives import Objective
from epp.routing.rewrites import RewriteRule, WeightedTarget

Obj = dict[str, Any]


def refers_to_pool(obj: Obj, pool_name: str, pool_group: str) -> bool:
    ref = (obj.get("spec") or {}).get("poolRef") or {}
    return ref.get("name") == pool_name and (ref.get("group") or pool_group) == pool_group


def objective_from_object(obj: Obj) -> Objective:
    priority = (obj.get("spec") or {}).get("priority")
    return Objective(obj["metadata"]["name"], int(priority) if priority is not None else 0)


def _created(obj: Obj) -> float:
    text = (obj.get("metadata") or {}).get("creationTimestamp")
    if not text:
        return 0.0
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rewrite_rules_from_object(obj: Obj) -> list[RewriteRule]:
    """One RewriteRule per (rule, match) in list order; a rule without matches is generic."""
    name, created = obj["metadata"]["name"], _created(obj)
    out: list[RewriteRule] = []
    for rule in (obj.get("spec") or {}).get("rules") or []:
        targets = tuple(
            WeightedTarget(t["modelRewrite"], int(t["weight"]) if t.get("weight") is not None else 0)
            for t in rule.get("targets") or []
            if t.get("modelRewrite")
        )
        if not targets:
            continue
        matches = [m.get("model") or {} for m in rule.get("matches") or []]
        exact = [m["value"] for m in matches if m.get("value") and m.get("type", "Exact") == "Exact"]
        if not matches:
            out.append(RewriteRule(name, created, targets, None))
        out.extend(RewriteRule(name, created, targets, model) for model in exact)
    return out

"""InferenceObjectives by name -> priority (filled by the Kubernetes source; empty when standalone)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    priority: int = 0


class ObjectiveStore:
    def __init__(self) -> None:
        self._by_name: dict[str, Objective] = {}

    def set(self, objective: Objective) -> None:
        self._by_name[objective.name] = objective

    def remove(self, name: str) -> None:
        self._by_name.pop(name, None)

    def priority(self, name: str) -> int:
        """Unknown or absent objective -> priority 0, as in the reference."""
        obj = self._by_name.get(name) if name else None
        return obj.priority if obj else 0

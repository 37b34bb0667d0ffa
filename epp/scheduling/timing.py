"""Per-plugin latency (`inference_extension_plugin_duration_seconds`), measured on a sample of
scheduling cycles: timing every call of every pick would add a few microseconds per plugin to
each request, and one cycle in `every` gives the same distribution."""

from __future__ import annotations

import time
from typing import Any, Protocol

from epp.scheduling.plugin import Plugin


class LabelledHistogram(Protocol):
    def labels(self, *values: str) -> Any: ...


class PluginTimer:
    __slots__ = ("_children", "_count", "every", "histogram")

    def __init__(self, histogram: LabelledHistogram, every: int = 16) -> None:
        self.histogram, self.every = histogram, every
        self._count = 0
        self._children: dict[tuple[str, int], Any] = {}

    def sample(self) -> PluginTimer | None:
        """Self for the cycles to time, None for the others."""
        self._count += 1
        return self if self._count % self.every == 0 else None

    def observe(self, point: str, plugin: Plugin, started: float) -> None:
        key = (point, id(plugin))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.histogram.labels(point, plugin.type_name, plugin.name)
        child.observe(time.perf_counter() - started)

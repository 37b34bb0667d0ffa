"""The `model_name` / `target_model_name` label values: real model names, never whatever clients send.

Each distinct label value costs about 23 KB of /metrics (a dozen histograms) for the life of the
process, and the model name comes from the request body, so without a bound one client can
make the page hundreds of megabytes (issue 13: 2,000 names -> 46.6 MB; one 1 MiB name -> 355 MB).

A name gets its own label when the pool says it is real: a model or adapter the servers report
in their metrics, a name in an InferenceModelRewrite rule, or a name a server has answered a
request for with 2xx (bounded: `MAX_CONFIRMED`). A few names the pool has not vouched for yet
get a label first-come (`MAX_UNVOUCHED`, so a model the servers serve under an alias still
shows up at once); every other name, and any name longer than `MAX_NAME_LENGTH`, is counted
under `OTHER`. Names that get a label are cached, so this costs one dict lookup per request once warm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

OTHER = "other"
MAX_NAME_LENGTH = 256
MAX_UNVOUCHED = 16
MAX_CONFIRMED = 32
MAX_CACHED = 4096  # decisions remembered; past that, the cache restarts (decisions are stable)
KNOWN_REFRESH = 1.0  # seconds between re-reads of the pool's known names


class ModelLabels:
    def __init__(self, known: Callable[[], Iterable[str]]) -> None:
        self._known_source = known
        self._known: frozenset[str] = frozenset()
        self._known_at = float("-inf")
        self._labels: dict[str, str] = {}
        self._unvouched: set[str] = set()
        self._confirmed: set[str] = set()

    def label(self, name: str) -> str:
        hit = self._labels.get(name)
        if hit is not None:
            return hit
        value = self._decide(name)
        if value is not OTHER:  # OTHER is decided afresh: the name may become known later
            if len(self._labels) >= MAX_CACHED:
                self._labels.clear()
            self._labels[name] = value
        return value

    def confirmed(self, name: str) -> None:
        """A server answered a request for `name` with 2xx: the name is real."""
        if not name or len(name) > MAX_NAME_LENGTH or name in self._confirmed or len(self._confirmed) >= MAX_CONFIRMED:
            return
        self._confirmed.add(name)

    def _decide(self, name: str) -> str:
        if not name:
            return name
        if len(name) > MAX_NAME_LENGTH:
            return OTHER
        if name in self._confirmed or name in self._unvouched:
            return name
        if name in self._known_names():
            return name
        if len(self._unvouched) < MAX_UNVOUCHED:
            self._unvouched.add(name)
            return name
        return OTHER

    def _known_names(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._known_at >= KNOWN_REFRESH:
            self._known = frozenset(self._known_source())
            self._known_at = now
        return self._known

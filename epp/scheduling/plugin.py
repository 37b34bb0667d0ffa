"""Plugin kinds and the registry that builds them from `EndpointPickerConfig` by type name.

Scorers return a list aligned with the endpoints they were given (not a dict): it is the
per-request hot path and list arithmetic is what Python does fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult


class Params(BaseModel):
    """Base for plugin parameters: unknown keys are errors, so a typo does not silently do nothing."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_BaseParams = Params


class Plugin:
    type_name: ClassVar[str] = ""
    Params: ClassVar[type[_BaseParams]] = _BaseParams

    def __init__(self, name: str, params: _BaseParams) -> None:
        self.name = name
        # Each plugin's own `Params` model, built by the registry from that class attribute; typed
        # Any here because every subclass reads its own fields from it.
        self.params: Any = params


class Category(str, Enum):
    AFFINITY = "Affinity"
    DISTRIBUTION = "Distribution"
    BALANCE = "Balance"


class Filter(Plugin):
    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    category: ClassVar[Category] = Category.DISTRIBUTION
    # True when score() can only return values within [0, 1] (or NaN, which a clamp keeps
    # too): the scheduler then skips clamping them, a pass over every endpoint per pick.
    scores_in_unit_range: ClassVar[bool] = False

    def score(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[float]:
        raise NotImplementedError


class Picker(Plugin):
    def pick(
        self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint], scores: list[float]
    ) -> list[Endpoint]:
        raise NotImplementedError


class DataProducer(Plugin):
    """Runs before scheduling to compute per-request data (e.g. prefix matches) into CycleState."""

    def produce(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> None:
        raise NotImplementedError


class PreRequest(Plugin):
    """Runs after a pick, before the request is forwarded (e.g. record the pick in the prefix index)."""

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        raise NotImplementedError


class ResponseComplete(Plugin):
    def response_complete(self, req: SchedulingRequest, result: SchedulingResult, usage: Any) -> None:
        raise NotImplementedError


class ProfileHandler(Plugin):
    def pick_profiles(
        self,
        cycle: CycleState,
        req: SchedulingRequest,
        profiles: dict[str, Any],
        results: dict[str, ProfileResult | None],
    ) -> dict[str, Any]:
        raise NotImplementedError

    def process_results(
        self, cycle: CycleState, req: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        raise NotImplementedError


class ConfigError(ValueError):
    """An EndpointPickerConfig that cannot be used; the message names the offending key."""


Factory = Callable[[str, dict[str, Any]], Plugin]
_REGISTRY: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    if not cls.type_name:
        raise TypeError(f"{cls.__name__} has no type_name")
    _REGISTRY[cls.type_name] = cls
    return cls


def registered_types() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def build_plugin(type_name: str, name: str, params: dict[str, Any] | None) -> Plugin:
    _load_builtins()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise ConfigError(f"plugin {name!r}: unknown plugin type {type_name!r} (known: {', '.join(sorted(_REGISTRY))})")
    try:
        parsed = cls.Params.model_validate(params or {})
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"plugin {name!r} ({type_name}): invalid parameters: {details}") from None
    try:
        return cls(name, parsed)
    except ValueError as exc:  # values pydantic lets through but the plugin cannot use (durations...)
        raise ConfigError(f"plugin {name!r} ({type_name}): invalid parameters: {exc}") from None


def _load_builtins() -> None:
    # Importing the package registers every built-in plugin exactly once.
    import epp.scheduling.plugins  # noqa: F401

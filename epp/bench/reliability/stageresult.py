"""What a reliability stage measured: rows of (what, value, bound, met?) and free-text notes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    what: str
    value: str
    bound: str = ""  # issue 13's Done-means figure, when there is one
    ok: bool | None = None  # None: a figure with no bound


@dataclass
class StageResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # the stage could not finish (its rows say how far it got)
    run: dict[str, str] = field(default_factory=dict)  # date and commit of the run that measured it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageResult:
        return cls(**{**d, "rows": [Row(**r) for r in d.get("rows", [])]})

    def figure(self, what: str, value: object) -> None:
        self.rows.append(Row(what, _fmt(value)))

    def check(self, what: str, value: object, bound: str, ok: bool) -> None:
        self.rows.append(Row(what, _fmt(value), bound, bool(ok)))

    @property
    def passed(self) -> bool:
        return not self.error and all(r.ok is not False for r in self.rows)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@dataclass(frozen=True)
class RunConfig:
    quick: bool = False
    fuzz_streams: int = 20_000
    fault_window_s: float = 20.0
    soak_s: float = 600.0
    seed: int = 13


Progress = Callable[[str], None]
StageFn = Callable[[RunConfig, Path, Progress], StageResult]

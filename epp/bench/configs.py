"""Find an EndpointPickerConfig by path or by name (a file in epp/scheduling/configs/)."""

from __future__ import annotations

from pathlib import Path

NAMED_DIR = Path(__file__).resolve().parents[1] / "scheduling" / "configs"


def resolve_config(ref: str) -> Path:
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (NAMED_DIR / ref, NAMED_DIR / f"{ref}.yaml", NAMED_DIR / f"{ref}.yml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in NAMED_DIR.glob("*.y*ml")) if NAMED_DIR.is_dir() else []
    raise FileNotFoundError(f"no EndpointPickerConfig {ref!r} (a file path, or one of: {', '.join(names) or 'none'})")

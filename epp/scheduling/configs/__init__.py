"""Named EndpointPickerConfigs shipped with the EPP (`--config-name`)."""

from __future__ import annotations

from importlib import resources

DEFAULT = "epp-default"


def names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(__package__).iterdir() if p.name.endswith(".yaml"))


def text(name: str) -> str:
    if name not in names():
        raise KeyError(f"unknown config name {name!r} (known: {', '.join(names())})")
    return (resources.files(__package__) / f"{name}.yaml").read_text()

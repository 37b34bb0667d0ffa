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


def with_local_kv_events(path: Path, workdir: Path, events_offset: int, replay_offset: int) -> Path:
    """A copy of a config whose precise-prefix-cache-producer dials a local fleet's KV-event
    sockets (HTTP port + offset) instead of the Kubernetes layout (a fixed port per pod IP);
    the config itself unchanged when it has no such producer."""
    import yaml

    doc = yaml.safe_load(path.read_text())
    changed = False
    for plugin in doc.get("plugins") or []:
        if plugin.get("type") == "precise-prefix-cache-producer":
            params = plugin.setdefault("parameters", {}) or {}
            plugin["parameters"] = params
            kv = params.setdefault("kvEventsConfig", {})
            kv["podDiscoveryConfig"] = {"socketPortOffset": events_offset, "replaySocketPortOffset": replay_offset}
            changed = True
    if not changed:
        return path
    out = workdir / f"{path.stem}-local-kv.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out

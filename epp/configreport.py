"""`epp --validate-only`: what a config file turns into, printed without starting anything.

A platform team checks a config in CI or before a rollout; the report says what will run (every
plugin with its parameters as resolved, the profiles in order, the flow-control bands and limits),
so a default that applied silently is visible too.
"""

from __future__ import annotations

from epp.flowcontrol.config import BandSettings
from epp.scheduling.config import LoadedConfig
from epp.scheduling.plugin import Plugin


def _plugin(p: Plugin) -> str:
    params = p.params.model_dump(by_alias=True, exclude_none=True) if p.params is not None else {}
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    label = p.type_name if p.name == p.type_name else f"{p.name} ({p.type_name})"
    return label + (f": {shown}" if shown else "")


def _limit(n: int, unit: str = "") -> str:
    return "unlimited" if n == 0 else f"{n}{unit}"


def _band(b: BandSettings) -> str:
    return (
        f"priority {b.priority}: maxRequests {_limit(b.max_requests)}, maxBytes {_limit(b.max_bytes, ' B')}, "
        f"fairness {b.fairness.type_name}, ordering {b.ordering.type_name}"
    )


def describe(config: LoadedConfig, source: str) -> str:
    spec = config.spec
    lines = [f"config: {source}", f"apiVersion: {spec.api_version}"]
    lines.append("featureGates: " + (", ".join(sorted(config.feature_gates)) or "none"))
    lines.append(f"request parser: {config.parser}")
    lines.append(f"plugins ({len(config.plugins)}):")
    lines += [f"  - {_plugin(p)}" for p in config.plugins.values()]
    lines.append(f"profile handler: {config.profile_handler.type_name}")
    for name, prof in config.profiles.items():
        lines.append(f"profile {name}:")
        lines += [f"  filter {f.name}" for f in prof.filters]
        lines += [f"  scorer {s.name} weight {w:g}" for s, w in prof.scorers]
        lines.append(f"  picker {prof.picker.name if prof.picker else 'max-score-picker (default)'}")
    fl = config.flow
    if not fl.enabled:
        lines.append("flow control: off (add featureGates: [flowControl] to turn it on)")
    else:
        lines.append(
            f"flow control: on ({'llm-d-router' if fl.llmd else 'GIE'} schema); maxRequests "
            f"{_limit(fl.max_requests)}, maxBytes {_limit(fl.max_bytes, ' B')}, request TTL "
            f"{f'{fl.ttl:g}s' if fl.ttl else 'none'}, no-endpoint TTL "
            f"{f'{fl.no_endpoint_ttl:g}s' if fl.no_endpoint_ttl else 'wait for an endpoint'}"
        )
        lines += [f"  band {_band(b)}" for b in fl.bands]
        if fl.template is not None:
            lines.append(f"  other priorities: {_band(fl.template(0)).split(': ', 1)[1]}")
        if fl.usage_limit is not None:
            lines.append(f"  usage limit: {_plugin(fl.usage_limit)}")
        if fl.detector is not None:
            lines.append(f"  saturation detector: {_plugin(fl.detector)}")
    lines += [f"warning: {w}" for w in fl.warnings]
    return "\n".join(lines) + "\n"

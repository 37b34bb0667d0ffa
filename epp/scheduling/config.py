"""EndpointPickerConfig: strict YAML schema, defaults as the reference applies them, and plugin wiring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from epp.flowcontrol.config import FlowControlSpec, FlowSettings, build_flow_settings
from epp.scheduling.plugin import (
    ConfigError,
    DataProducer,
    Filter,
    Picker,
    Plugin,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    Scorer,
    build_plugin,
    registered_types,
)

API_VERSIONS = ("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1")
KNOWN_FEATURE_GATES = ("dataLayer", "enableLegacyMetrics", "flowControl")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PluginSpec(_Strict):
    name: str | None = None
    type: str
    parameters: dict[str, Any] | None = None


class ProfilePluginRef(_Strict):
    plugin_ref: str = Field(alias="pluginRef")
    weight: float | None = None


class ProfileSpec(_Strict):
    name: str
    plugins: list[ProfilePluginRef] = Field(default_factory=list)


class PluginRef(_Strict):
    plugin_ref: str = Field(alias="pluginRef")


class DataSourceSpec(_Strict):
    plugin_ref: str = Field(alias="pluginRef")
    extractors: list[PluginRef] = Field(default_factory=list)


class DataLayerSpec(_Strict):
    sources: list[DataSourceSpec] = Field(default_factory=list)


class EndpointPickerConfigSpec(_Strict):
    api_version: str = Field(alias="apiVersion")
    kind: str
    feature_gates: list[str] = Field(default_factory=list, alias="featureGates")
    plugins: list[PluginSpec] = Field(default_factory=list)
    scheduling_profiles: list[ProfileSpec] = Field(default_factory=list, alias="schedulingProfiles")
    saturation_detector: PluginRef | None = Field(None, alias="saturationDetector")
    data_layer: DataLayerSpec | None = Field(None, alias="dataLayer")
    flow_control: FlowControlSpec | None = Field(None, alias="flowControl")
    parser: PluginRef | None = None


@dataclass
class Profile:
    name: str
    filters: list[Filter] = field(default_factory=list)
    scorers: list[tuple[Scorer, float]] = field(default_factory=list)
    picker: Picker | None = None


@dataclass
class LoadedConfig:
    spec: EndpointPickerConfigSpec
    plugins: dict[str, Plugin]
    profiles: dict[str, Profile]
    profile_handler: ProfileHandler
    producers: list[DataProducer]
    pre_request: list[PreRequest]
    response_complete: list[ResponseComplete]
    parser: str
    feature_gates: frozenset[str]
    flow: FlowSettings

    def plugins_of(self, cls: type) -> list[Any]:
        return [p for p in self.plugins.values() if isinstance(p, cls)]


def parse_config_text(text: str, source: str = "config") -> EndpointPickerConfigSpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        spec = EndpointPickerConfigSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + _describe(exc)) from None
    if spec.api_version not in API_VERSIONS:
        raise ConfigError(f"{source}: apiVersion {spec.api_version!r} is not one of {', '.join(API_VERSIONS)}")
    if spec.kind != "EndpointPickerConfig":
        raise ConfigError(f"{source}: kind {spec.kind!r} must be EndpointPickerConfig")
    for gate in spec.feature_gates:
        if gate not in KNOWN_FEATURE_GATES:
            raise ConfigError(f"{source}: featureGates: unknown feature gate {gate!r}")
    return spec


def load_config(text: str | None, source: str = "config") -> LoadedConfig:
    """Load a config; None means the project's default (`epp-default`)."""
    if not text:
        from epp.scheduling import configs

        text, source = configs.text(configs.DEFAULT), f"built-in config {configs.DEFAULT!r}"
    return build_config(parse_config_text(text, source), source)


def build_config(spec: EndpointPickerConfigSpec, source: str) -> LoadedConfig:
    plugins: dict[str, Plugin] = {}
    for i, p in enumerate(spec.plugins):
        name = p.name or p.type
        if name in plugins:
            raise ConfigError(f"{source}: plugins[{i}]: duplicate plugin name {name!r}")
        try:
            plugins[name] = build_plugin(p.type, name, p.parameters)
        except ConfigError as exc:
            raise ConfigError(f"{source}: plugins[{i}]: {exc}") from None

    def ref(where: str, name: str) -> Plugin:
        if name not in plugins:
            # The reference instantiates its defaults (parser, saturation detector, data source and
            # extractor) when a config refers to them by type name without declaring them.
            if name in registered_types():
                plugins[name] = build_plugin(name, name, {})
                return plugins[name]
            raise ConfigError(f"{source}: {where}: pluginRef {name!r} names no plugin in 'plugins'")
        return plugins[name]

    # A prefix scorer without a producer would score zero forever: create the producer, as the reference does.
    if any(p.type_name == "prefix-cache-scorer" for p in plugins.values()) and not any(
        p.type_name == "approx-prefix-cache-producer" for p in plugins.values()
    ):
        plugins["approx-prefix-cache-producer"] = build_plugin(
            "approx-prefix-cache-producer", "approx-prefix-cache-producer", {}
        )

    profile_specs = spec.scheduling_profiles
    if not profile_specs:
        refs = [ProfilePluginRef(plugin_ref=n) for n, p in plugins.items() if isinstance(p, (Filter, Scorer, Picker))]
        profile_specs = [ProfileSpec(name="default", plugins=refs)]
    profiles: dict[str, Profile] = {}
    first_picker = next((p for p in plugins.values() if isinstance(p, Picker)), None)
    for i, ps in enumerate(profile_specs):
        if ps.name in profiles:
            raise ConfigError(f"{source}: schedulingProfiles[{i}]: duplicate profile name {ps.name!r}")
        prof = Profile(ps.name)
        for j, r in enumerate(ps.plugins):
            where = f"schedulingProfiles[{i}].plugins[{j}]"
            plugin = ref(where, r.plugin_ref)
            if isinstance(plugin, Filter):
                prof.filters.append(plugin)
            if isinstance(plugin, Scorer):
                weight = 1.0 if r.weight is None else r.weight
                if weight < 0:
                    raise ConfigError(f"{source}: {where}: weight must not be negative")
                prof.scorers.append((plugin, weight))
            if isinstance(plugin, Picker):
                if prof.picker is not None:
                    raise ConfigError(f"{source}: {where}: profile {ps.name!r} has more than one picker")
                prof.picker = plugin
            if not isinstance(plugin, (Filter, Scorer, Picker)):
                raise ConfigError(
                    f"{source}: {where}: plugin {r.plugin_ref!r} ({plugin.type_name}) is not a filter, scorer or picker"
                )
        if prof.picker is None:
            prof.picker = first_picker or build_plugin("max-score-picker", "max-score-picker", {})  # type: ignore[assignment]
        profiles[ps.name] = prof

    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise ConfigError(f"{source}: exactly one profile handler is allowed, found {[h.name for h in handlers]}")
    if handlers:
        handler = handlers[0]
    else:
        handler = build_plugin("single-profile-handler", "single-profile-handler", {})  # type: ignore[assignment]
    bind = getattr(handler, "bind", None)
    if bind is not None:
        try:
            bind(plugins)
        except ValueError as exc:
            raise ConfigError(f"{source}: plugin {handler.name!r}: {exc}") from None
    if handler.type_name == "disagg-profile-handler":
        missing = {handler.params.decode_profile} - set(profiles)
        if missing:
            raise ConfigError(f"{source}: disagg-profile-handler needs a scheduling profile named {missing.pop()!r}")
    if handler.type_name == "single-profile-handler" and len(profiles) > 1:
        raise ConfigError(
            f"{source}: single-profile-handler cannot run {len(profiles)} profiles; "
            "configure a profile handler that chooses between them"
        )

    parser = "openai-parser"
    if spec.parser is not None:
        parser_plugin = ref("parser", spec.parser.plugin_ref)
        if parser_plugin.type_name not in ("openai-parser", "passthrough-parser"):
            raise ConfigError(f"{source}: parser: {parser_plugin.type_name!r} is not a request parser")
        parser = parser_plugin.type_name
    detectors = [p for p in plugins.values() if hasattr(p, "detector")]
    flow = build_flow_settings(
        spec.flow_control,
        frozenset(spec.feature_gates),
        spec.api_version,
        spec.saturation_detector.plugin_ref if spec.saturation_detector else None,
        ref,
        detectors,
        source,
    )
    if spec.data_layer is not None:
        for i, s in enumerate(spec.data_layer.sources):
            ref(f"dataLayer.sources[{i}]", s.plugin_ref)
            for j, e in enumerate(s.extractors):
                ref(f"dataLayer.sources[{i}].extractors[{j}]", e.plugin_ref)

    return LoadedConfig(
        spec=spec,
        plugins=plugins,
        profiles=profiles,
        profile_handler=handler,
        producers=[p for p in plugins.values() if isinstance(p, DataProducer)],
        pre_request=[p for p in plugins.values() if isinstance(p, PreRequest)],
        response_complete=[p for p in plugins.values() if isinstance(p, ResponseComplete)],
        parser=parser,
        feature_gates=frozenset(spec.feature_gates),
        flow=flow,
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)

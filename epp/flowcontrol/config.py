"""The `flowControl:` section: strict schema (GIE and llm-d-router keys) and resolved settings.

Defaults follow the schema the config names in `apiVersion`: the GIE one (no TTL, bands
unbounded in count) or llm-d-router's (60 s TTL, 5,000 requests per band, band 0 always
there). Quantities are Kubernetes quantities (`10Gi`, `20k`, `1e9`), durations Go durations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.duration import parse_duration
from epp.flowcontrol.fairness import FairnessPolicy
from epp.flowcontrol.ordering import OrderingPolicy
from epp.flowcontrol.usagelimit import UsageLimitPolicy
from epp.scheduling.plugin import ConfigError, Plugin

LLMD_API = "llm-d.ai/v1alpha1"
FEATURE_GATE = "flowControl"
GIE_BAND_MAX_BYTES = 1_000_000_000
LLMD_BAND_MAX_REQUESTS = 5000
LLMD_TTL = 60.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Quantity = int | str


class BandTemplateSpec(_Strict):
    max_bytes: Quantity | None = Field(None, alias="maxBytes")
    max_requests: Quantity | None = Field(None, alias="maxRequests")
    ordering_policy_ref: str | None = Field(None, alias="orderingPolicyRef")
    fairness_policy_ref: str | None = Field(None, alias="fairnessPolicyRef")


class PriorityBandSpec(BandTemplateSpec):
    priority: int


class PluginRefSpec(_Strict):
    plugin_ref: str = Field(alias="pluginRef")


class FlowControlSpec(_Strict):
    max_bytes: Quantity | None = Field(None, alias="maxBytes")
    max_requests: Quantity | None = Field(None, alias="maxRequests")
    default_request_ttl: str | None = Field(None, alias="defaultRequestTTL")
    no_endpoint_request_ttl: str | None = Field(None, alias="noEndpointRequestTTL")
    default_priority_band: BandTemplateSpec | None = Field(None, alias="defaultPriorityBand")
    default_negative_priority_band: BandTemplateSpec | None = Field(None, alias="defaultNegativePriorityBand")
    priority_bands: list[PriorityBandSpec] = Field(default_factory=list, alias="priorityBands")
    usage_limit_policy_plugin_ref: str | None = Field(None, alias="usageLimitPolicyPluginRef")
    saturation_detector: PluginRefSpec | None = Field(None, alias="saturationDetector")
    enable_eviction: bool = Field(False, alias="enableEviction")


_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E))?$")


def parse_quantity(value: Quantity | None, where: str) -> int:
    """A Kubernetes quantity as a whole number (None = 0 = unset)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a quantity, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _QUANTITY.match(value.strip())
        if not m:
            raise ConfigError(f"{where}: {value!r} is not a quantity (examples: 500, 20k, 10Gi, 1e9)")
        number, exponent, suffix = m.groups()
        mult = _BINARY.get(suffix or "") or _DECIMAL.get(suffix or "", 1)
        scaled = float(number) * mult * (10 ** int(exponent[1:]) if exponent else 1)
        if scaled != int(scaled):
            raise ConfigError(f"{where}: {value!r} is not a whole number")
        n = int(scaled)
    if n < 0:
        raise ConfigError(f"{where}: must not be negative (got {value!r})")
    return n


def _ttl(text: str | None, where: str) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if seconds < 0:
        raise ConfigError(f"{where}: must not be negative (got {text!r})")
    return seconds


@dataclass(frozen=True)
class BandSettings:
    priority: int
    max_bytes: int  # 0 = unlimited
    max_requests: int  # 0 = unlimited
    fairness: FairnessPolicy
    ordering: OrderingPolicy


@dataclass(frozen=True)
class FlowSettings:
    enabled: bool  # featureGates: [flowControl]
    llmd: bool  # llm-d-router schema: its defaults and status codes
    max_bytes: int = 0
    max_requests: int = 0
    ttl: float = 0.0  # 0: no TTL (the client's own timeout ends the wait)
    no_endpoint_ttl: float = 0.0  # budget while the pool has no endpoint; 0: wait for one
    bands: tuple[BandSettings, ...] = ()
    template: Callable[[int], BandSettings] | None = None
    negative_template: Callable[[int], BandSettings] | None = None
    usage_limit: UsageLimitPolicy | None = None
    detector: Plugin | None = None  # utilization-detector or concurrency-detector plugin
    # The budget restarts when the pool empties or fills (llm-d; or noEndpointRequestTTL given).
    split_budget: bool = False
    warnings: list[str] = field(default_factory=list)


def build_flow_settings(
    spec: FlowControlSpec | None,
    gates: frozenset[str],
    api_version: str,
    top_detector: str | None,
    ref: Callable[[str, str], Plugin],
    detectors: list[Plugin],
    source: str,
) -> FlowSettings:
    """Resolve the section against the config's plugins (`ref(where, name)` finds or creates
    one by type name, as the reference auto-registers its default policies)."""
    enabled = FEATURE_GATE in gates
    llmd = api_version == LLMD_API
    fc = spec or FlowControlSpec()
    w = "flowControl"
    warnings: list[str] = []
    if spec is not None and not enabled:
        warnings.append(f"{source}: flowControl is set but the flowControl feature gate is off: it is ignored")
    if fc.enable_eviction:
        raise ConfigError(f"{source}: {w}.enableEviction: eviction of in-flight requests is not supported")

    detector_name = fc.saturation_detector.plugin_ref if fc.saturation_detector else top_detector
    if detector_name is not None:
        detector = ref(f"{w}.saturationDetector" if fc.saturation_detector else "saturationDetector", detector_name)
    elif detectors:
        detector = detectors[0]
    else:
        detector = ref("saturationDetector", "utilization-detector")
    if not hasattr(detector, "detector"):
        raise ConfigError(
            f"{source}: saturationDetector: {detector.name!r} ({detector.type_name}) is not a "
            "saturation detector (utilization-detector, concurrency-detector)"
        )

    kinds = {
        FairnessPolicy: "fairness policy",
        OrderingPolicy: "ordering policy",
        UsageLimitPolicy: "usage limit policy",
    }

    def policy(where: str, name: str | None, default: str, kind: type[Plugin]) -> Any:
        p = ref(f"{w}.{where}", name or default)
        if not isinstance(p, kind):
            raise ConfigError(f"{source}: {w}.{where}: plugin {p.name!r} ({p.type_name}) is not a {kinds[kind]}")
        return p

    usage = policy(
        "usageLimitPolicyPluginRef", fc.usage_limit_policy_plugin_ref, "static-usage-limit-policy", UsageLimitPolicy
    )
    band_requests_default = LLMD_BAND_MAX_REQUESTS if llmd else 0

    def band_from(where: str, b: BandTemplateSpec, priority: int) -> BandSettings:
        max_bytes = parse_quantity(b.max_bytes, f"{source}: {w}.{where}.maxBytes") or GIE_BAND_MAX_BYTES
        max_requests = parse_quantity(b.max_requests, f"{source}: {w}.{where}.maxRequests") or band_requests_default
        return BandSettings(
            priority,
            max_bytes,
            max_requests,
            policy(
                f"{where}.fairnessPolicyRef", b.fairness_policy_ref, "global-strict-fairness-policy", FairnessPolicy
            ),
            policy(f"{where}.orderingPolicyRef", b.ordering_policy_ref, "fcfs-ordering-policy", OrderingPolicy),
        )

    template_spec = fc.default_priority_band or BandTemplateSpec()
    proto = band_from("defaultPriorityBand", template_spec, 0)
    negative_spec = fc.default_negative_priority_band
    neg_proto = band_from("defaultNegativePriorityBand", negative_spec, -1) if negative_spec else proto

    bands: list[BandSettings] = []
    seen: set[int] = set()
    for i, b in enumerate(fc.priority_bands):
        if b.priority in seen:
            raise ConfigError(f"{source}: {w}.priorityBands[{i}].priority: duplicate priority {b.priority}")
        seen.add(b.priority)
        bands.append(band_from(f"priorityBands[{i}]", b, b.priority))
    if llmd and 0 not in seen:
        bands.append(BandSettings(0, proto.max_bytes, proto.max_requests, proto.fairness, proto.ordering))

    ttl = _ttl(fc.default_request_ttl, f"{source}: {w}.defaultRequestTTL")
    if ttl is None:
        ttl = LLMD_TTL if llmd else 0.0
    no_ep = _ttl(fc.no_endpoint_request_ttl, f"{source}: {w}.noEndpointRequestTTL")
    return FlowSettings(
        enabled=enabled,
        llmd=llmd,
        max_bytes=parse_quantity(fc.max_bytes, f"{source}: {w}.maxBytes"),
        max_requests=parse_quantity(fc.max_requests, f"{source}: {w}.maxRequests"),
        ttl=ttl,
        no_endpoint_ttl=ttl if no_ep is None else no_ep,
        bands=tuple(bands),
        template=lambda pr: BandSettings(pr, proto.max_bytes, proto.max_requests, proto.fairness, proto.ordering),
        negative_template=lambda pr: BandSettings(
            pr, neg_proto.max_bytes, neg_proto.max_requests, neg_proto.fairness, neg_proto.ordering
        ),
        usage_limit=usage,
        detector=detector,
        split_budget=llmd or no_ep is not None,
        warnings=warnings,
    )

"""InferencePool objects (v1 and the legacy v1alpha2 shape) -> the selector and ports the EPP serves."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

V1_GROUP = "inference.networking.k8s.io"
LEGACY_GROUP = "inference.networking.x-k8s.io"
MAX_TARGET_PORTS = 8


class PoolError(ValueError):
    """An InferencePool the EPP cannot serve (no selector, no ports...)."""


@dataclass(frozen=True)
class PoolSpec:
    name: str
    namespace: str
    selector: tuple[tuple[str, str], ...]  # matchLabels, sorted, so equal specs compare equal
    target_ports: tuple[int, ...]
    app_protocol: str = "http"

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.selector)


def pool_version(group: str) -> str:
    """The API version to read for --pool-group."""
    return "v1alpha2" if group == LEGACY_GROUP else "v1"


def pool_from_object(obj: dict[str, Any]) -> PoolSpec:
    md, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if "targetPorts" in spec or isinstance(spec.get("selector", {}).get("matchLabels"), dict):
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        ports = [int(p["number"]) for p in spec.get("targetPorts") or []]
    else:  # v1alpha2: spec.selector is the label map, one targetPortNumber
        selector = spec.get("selector") or {}
        ports = [int(spec["targetPortNumber"])] if spec.get("targetPortNumber") else []
    if not selector:
        raise PoolError(f"InferencePool {md.get('name')}: empty selector")
    if not ports:
        raise PoolError(f"InferencePool {md.get('name')}: no target ports")
    unique = tuple(dict.fromkeys(ports))[:MAX_TARGET_PORTS]
    return PoolSpec(
        md.get("name", ""),
        md.get("namespace", ""),
        tuple(sorted(selector.items())),
        unique,
        spec.get("appProtocol") or "http",
    )


def standalone_pool(selector: str, target_ports: list[int], namespace: str, name: str) -> PoolSpec:
    """The pool --endpoint-selector/--endpoint-target-ports describe (no InferencePool object)."""
    labels: dict[str, str] = {}
    for item in selector.split(","):
        if not item.strip():
            continue
        key, sep, value = item.replace("==", "=").partition("=")
        if not sep or not key.strip() or "!" in key:
            raise PoolError(f"--endpoint-selector {selector!r}: only key=value[,key=value] is supported")
        labels[key.strip()] = value.strip()
    if not labels:
        raise PoolError("--endpoint-selector is empty")
    return PoolSpec(name, namespace, tuple(sorted(labels.items())), tuple(target_ports))


_DEPLOYMENT_OF_POD = re.compile(r"^(.+)-[a-z0-9]+-[a-z0-9]+$")


def standalone_name(pod_name: str) -> str:
    """The reference names a standalone EPP after its Deployment, parsed from POD_NAME."""
    m = _DEPLOYMENT_OF_POD.match(pod_name or "")
    return m.group(1) if m else (pod_name or "standalone")

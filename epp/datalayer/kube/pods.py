"""Pods -> endpoints: one per Ready pod and active target port, named `<pod>-rank-<i>`."""

from __future__ import annotations

from typing import Any

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.engines import DEFAULT_ENGINE, ENGINES
from epp.datalayer.kube.pool import PoolSpec

ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
ENGINE_LABEL = "inference.networking.k8s.io/engine-type"


def pod_ready(pod: dict[str, Any]) -> bool:
    """Reference `IsPodReady`: not being deleted, condition Ready=True, and an IP to send to."""
    md, st = pod.get("metadata") or {}, pod.get("status") or {}
    if md.get("deletionTimestamp") or not st.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def active_ports(pod: dict[str, Any]) -> set[int] | None:
    """Ports the pod's annotation allows (data parallelism), or None when it does not say."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(ACTIVE_PORTS_ANNOTATION)
    if text is None:
        return None
    return {int(p) for p in text.split(",") if p.strip().isdigit()}


def pod_endpoints(
    pod: dict[str, Any], pool: PoolSpec, engine_label: str = ENGINE_LABEL, default_engine: str = DEFAULT_ENGINE
) -> list[Endpoint]:
    """The endpoints this pod contributes to the pool now (empty when not ready or not selected)."""
    md = pod.get("metadata") or {}
    labels = md.get("labels") or {}
    if not pool.matches(labels) or not pod_ready(pod):
        return []
    allowed = active_ports(pod)
    engine = labels.get(engine_label) or default_engine
    if engine not in ENGINES:
        engine = default_engine
    name, ip = md["name"], pod["status"]["podIP"]
    return [
        Endpoint(
            name=f"{name}-rank-{i}",
            address=ip,
            port=port,
            engine=engine,
            labels=dict(labels),
            pod_name=name,
            namespace=md.get("namespace", ""),
        )
        for i, port in enumerate(pool.target_ports)
        if allowed is None or port in allowed
    ]

"""Render the Envoy bootstraps in deploy/envoy/ for given ports (tests, `make run`, benchmarks).

The files in deploy/envoy/ are what users run; this only swaps addresses and ports, so tests
exercise exactly those files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "envoy"
CONFIGS = {"original-dst": "original-dst.yaml", "override-host": "override-host.yaml"}


def _socket(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def render(
    kind: str,
    *,
    listen_port: int,
    admin_port: int,
    epp_port: int,
    pool: Sequence[tuple[str, int]] = (),
    epp_tls: bool = True,
    failure_mode_allow: bool | None = None,
    lb: str | None = None,
    more_epp_ports: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Load deploy/envoy/<kind>.yaml and point it at the given ports.

    `lb` ("round_robin" / "least_request") turns the file into a no-EPP baseline: the ext_proc
    filter is dropped and the pool cluster balances by itself (the "Kubernetes Service" case).
    """
    conf = yaml.safe_load((DEPLOY_DIR / CONFIGS[kind]).read_text())
    conf["admin"]["address"] = _socket(admin_port)
    listener = conf["static_resources"]["listeners"][0]
    listener["address"] = _socket(listen_port)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    clusters = {c["name"]: c for c in conf["static_resources"]["clusters"]}
    epp = clusters["epp"]
    lb_endpoints = epp["load_assignment"]["endpoints"][0]["lb_endpoints"]
    lb_endpoints[0]["endpoint"]["address"] = _socket(epp_port)
    for extra in more_epp_ports:  # active-active EPP replicas behind one ext_proc cluster
        lb_endpoints.append({"endpoint": {"address": _socket(extra)}})
    if not epp_tls:
        epp.pop("transport_socket", None)
        for hc in epp.get("health_checks", []):
            hc.pop("tls_options", None)
    extproc = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    if failure_mode_allow is not None:
        extproc["typed_config"]["failure_mode_allow"] = failure_mode_allow
    if "pool" in clusters and pool:
        clusters["pool"]["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": _socket(p, h)}} for h, p in pool
        ]
    if lb is not None:
        filters.remove(extproc)
        route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
        route["cluster"] = "baseline"
        conf["static_resources"]["clusters"].append(_baseline_cluster(list(pool), lb))
    return conf


def _baseline_cluster(pool: list[tuple[str, int]], lb: str) -> dict[str, Any]:
    return {
        "name": "baseline",
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST"}[lb],
        "circuit_breakers": {
            "thresholds": [{"max_connections": 40000, "max_pending_requests": 40000, "max_requests": 40000}]
        },
        "load_assignment": {
            "cluster_name": "baseline",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(p, h)}} for h, p in pool]}],
        },
    }


def write(conf: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path

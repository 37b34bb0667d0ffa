"""End to end in Kubernetes mode: client -> real Envoy -> EPP (endpoints from the test API server) -> epp-sim.

The EPP is the real `epp` process with --pool-name and --kube-api-server; the "pods" are
epp-sim replicas on 127.0.0.1, one per target port (the active-ports annotation, as for
data-parallel pods).
"""

from __future__ import annotations

import time

import httpx
import pytest

from epp.stack.processes import Proc, bin_path, free_port, wait_port
from tests.e2e.conftest import MODEL, EppProc
from tests.support.kubeapi import OBJECTIVES, PODS, POOL_V1, KubeApiServer

NS = "default"


def sim_pod(name: str, port: int, ready: bool = True) -> dict:
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": "sim"},
            "annotations": {"inference.networking.k8s.io/active-ports": str(port)},
        },
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


@pytest.fixture
def kubeapi():
    server = KubeApiServer().start()
    yield server
    server.close()


def served_by(gw_url: str, n: int, headers: dict[str, str] | None = None) -> dict[str, int]:
    seen: dict[str, int] = {}
    with httpx.Client(base_url=gw_url, timeout=30) as c:
        for i in range(n):
            r = c.post(
                "/v1/completions", json={"model": MODEL, "prompt": f"hello {i}", "max_tokens": 1}, headers=headers or {}
            )
            key = r.headers.get("x-inference-port", str(r.status_code)) if r.status_code == 200 else str(r.status_code)
            seen[key] = seen.get(key, 0) + 1
    return seen


def test_envoy_routes_to_pods_discovered_from_the_api_server(kubeapi, sim_fleet, procs, envoy):
    started, tmp = procs
    fleet = sim_fleet(2)
    p0, p1 = fleet.ports
    kubeapi.create(
        POOL_V1,
        {
            "metadata": {"name": "pool", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": p0}, {"number": p1}]},
        },
    )
    kubeapi.create(PODS, sim_pod("sim-a", p0))
    kubeapi.create(PODS, sim_pod("sim-b", p1))
    kubeapi.create(
        OBJECTIVES,
        {"metadata": {"name": "batch", "namespace": NS}, "spec": {"priority": -1, "poolRef": {"name": "pool"}}},
    )

    g, h, m = free_port(), free_port(), free_port()
    argv = [
        bin_path("epp"),
        "--pool-name",
        "pool",
        "--pool-namespace",
        NS,
        "--kube-api-server",
        kubeapi.url,
        "--grpc-port",
        str(g),
        "--grpc-health-port",
        str(h),
        "--metrics-port",
        str(m),
        "-v=3",
        "--metrics-endpoint-auth=false",
    ]  # this test reads /metrics without a token (tests/e2e/test_security.py has auth)
    proc = Proc("epp-kube", argv, tmp / f"epp-{g}.log").start()
    started.append(proc)
    wait_port(g, proc=proc.popen)
    epp = EppProc(proc, g, h, m, argv)
    gw = envoy("original-dst", epp)

    assert set(served_by(gw.url, 20)) == {str(p0), str(p1)}

    # The pod behind p1 goes NotReady: Envoy is sent only to p0 from then on.
    kubeapi.update(PODS, sim_pod("sim-b", p1, ready=False))
    deadline = time.monotonic() + 5
    while set(served_by(gw.url, 5)) != {str(p0)}:
        assert time.monotonic() < deadline, "NotReady pod still receives traffic"
    assert set(served_by(gw.url, 20)) == {str(p0)}

    # An objective from the API server reaches the EPP: an idle pool admits the sheddable request,
    # and its priority labels the request metric.
    assert served_by(gw.url, 1, {"x-gateway-inference-objective": "batch"}) == {str(p0): 1}
    metrics = epp.metrics()
    assert 'epp_kubernetes_watch_up{resource="pods"} 1.0' in metrics
    assert f'inference_objective_request_total{{model_name="{MODEL}",priority="-1"' in metrics

"""The EPP in Kubernetes mode for the fault stages: pods and pool from the project's test API server.

Each `epp-sim --replicas N` process is one data-parallel "pod" (podIP 127.0.0.1, its ports in
the active-ports annotation, as tests/e2e/test_kubernetes.py does), and the pool's targetPorts
are all of them. The pods stay Ready whatever happens to the processes behind them: a server
that dies is usually still Ready for a while, and the EPP must not wait for Kubernetes.

The test API server lives in tests/support/kubeapi.py; run from the repository root
(`python -m epp.bench.reliability`, as `make bench-reliability` does) to reach it.
"""

from __future__ import annotations

from typing import Any

from epp.bench.reliability.stack import EppProcess, SimProcess, Stack

NAMESPACE = "default"
POOL = "pool"


def kube_api_server() -> Any:
    try:
        from tests.support.kubeapi import KubeApiServer
    except ImportError as exc:
        raise RuntimeError("the Kubernetes stage needs tests/support/kubeapi.py: run from the repository root "
                           "(python -m epp.bench.reliability)") from exc
    return KubeApiServer().start()


def sim_pod(name: str, sim: SimProcess) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "sim"},
                         "annotations": {"inference.networking.k8s.io/active-ports": ",".join(map(str, sim.ports))}},
            "status": {"podIP": sim.host, "conditions": [{"type": "Ready", "status": "True"}]}}


def start_kube_epp(stack: Stack, kubeapi: Any, sims: list[SimProcess], *args: str) -> EppProcess:
    from tests.support.kubeapi import PODS, POOL_V1

    ports = [p for s in sims for p in s.ports]
    kubeapi.create(POOL_V1, {"metadata": {"name": POOL, "namespace": NAMESPACE},
                             "spec": {"selector": {"matchLabels": {"app": "sim"}},
                                      "targetPorts": [{"number": p} for p in ports]}})
    for i, s in enumerate(sims):
        kubeapi.create(PODS, sim_pod(f"sim-{i}", s))
    return stack.epp("--pool-name", POOL, "--pool-namespace", NAMESPACE, "--kube-api-server", kubeapi.url,
                     "--metrics-endpoint-auth=false", *args, name="epp-kube")

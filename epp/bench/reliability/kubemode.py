"""The EPP in Kubernetes mode for the fault stages: pods and pool from the project's test API server.

Each `epp-sim --replicas N` process is one data-parallel "pod" (podIP 127.0.0.1, its ports in
the active-ports annotation, as tests/e2e/test_kubernetes.py does), and the pool's targetPorts
are all of them. The pods stay Ready whatever happens to the processes behind them: a server
that dies is usually still Ready for a while, and the EPP must not wait for Kubernetes.

The test API server lives in tests/support/kubeapi.py, so this runs from a checkout (as
`make bench-reliability` does), not from an installed wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from epp.bench.reliability.stack import EppProcess, SimProcess, Stack

NAMESPACE = "default"
POOL = "pool"


def _test_support() -> Any:
    try:
        from tests.support import kubeapi
    except ImportError:
        # An editable install (make install) runs this file from the checkout: its root holds tests/.
        root = Path(__file__).resolve().parents[3]
        if not (root / "tests" / "support" / "kubeapi.py").exists():
            raise RuntimeError("the Kubernetes variant needs tests/support/kubeapi.py from the repository") from None
        sys.path.insert(0, str(root))
        from tests.support import kubeapi
    return kubeapi


def kube_api_server() -> Any:
    return _test_support().KubeApiServer().start()


def sim_pod(name: str, sim: SimProcess) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app": "sim"},
            "annotations": {"inference.networking.k8s.io/active-ports": ",".join(map(str, sim.ports))},
        },
        "status": {"podIP": sim.host, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def start_kube_epp(stack: Stack, kubeapi: Any, sims: list[SimProcess], *args: str) -> EppProcess:
    kinds = _test_support()
    ports = [p for s in sims for p in s.ports]
    kubeapi.create(
        kinds.POOL_V1,
        {
            "metadata": {"name": POOL, "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": p} for p in ports]},
        },
    )
    for i, s in enumerate(sims):
        kubeapi.create(kinds.PODS, sim_pod(f"sim-{i}", s))
    return stack.epp(
        "--pool-name",
        POOL,
        "--pool-namespace",
        NAMESPACE,
        "--kube-api-server",
        kubeapi.url,
        "--metrics-endpoint-auth=false",
        *args,
        name="epp-kube",
    )

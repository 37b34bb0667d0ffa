"""Kubernetes-mode fixtures: the test API server, object builders, and an EPP wired to both."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import pytest

from epp.datalayer.kube.informer import WatchTuning
from epp.ha.lease import LeaseTuning
from epp.options import Options
from epp.runner import Epp
from epp.scheduling.config import load_config
from epp.stack.processes import free_port
from tests.support.inproc import serving
from tests.support.kubeapi import KubeApiServer

NS = "default"
APP = {"app": "vllm"}
# Short timeouts so outages and stalls resolve within a test; semantics are unchanged.
FAST = WatchTuning(
    backoff_initial=0.1,
    backoff_max=0.5,
    stall_timeout=2.0,
    watch_timeout=(60, 60),
    connect_timeout=1.0,
    list_timeout=5.0,
)
FAST_LEASE = LeaseTuning(lease_duration=2.0, renew_deadline=1.5, retry_period=0.2, request_timeout=1.0)


def pod(
    name: str,
    ip: str,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": NS, "labels": dict(APP if labels is None else labels)}
    if annotations:
        md["annotations"] = annotations
    return {
        "metadata": md,
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pool(name: str = "pool", selector: dict[str, str] | None = None, ports: tuple[int, ...] = (8000,)) -> dict:
    return {
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": dict(APP if selector is None else selector)},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> float:
    """Poll `predicate` on the event loop until true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def names(epp: Epp) -> set[str]:
    return {e.name for e in epp.datastore.endpoints()}


@pytest.fixture
def kubeapi():
    server = KubeApiServer(bookmark_interval=0.5).start()
    yield server
    server.close()


@contextlib.asynccontextmanager
async def kube_epp(
    server: KubeApiServer,
    config_text: str | None = None,
    tuning: WatchTuning = FAST,
    lease: LeaseTuning = FAST_LEASE,
    identity: str | None = None,
    **opts,
):
    o = Options(
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        secure_serving=False,
        refresh_metrics_interval=3600,
        kube_api_server=server.url,
        pool_namespace=NS,
        **({"pool_name": "pool"} | opts),
    )
    epp = Epp(o, load_config(config_text), [])
    for source in epp.sources:
        if hasattr(source, "tuning"):
            source.tuning = lease if type(source).__name__ == "LeaderElection" else tuning
        if identity is not None and hasattr(source, "identity"):
            source.identity = identity
    async with serving(epp) as running:
        yield running


async def pick(
    channel: grpc.aio.Channel, model: str = "m1", headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """One request through ext_proc: (HTTP status, destination endpoint, model in the forwarded body)."""
    import orjson
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

    from tests.support.extproc_client import request_body, request_headers, run_stream, set_headers, streamed_body

    NONE = ProcessingMode.NONE

    first_message = request_headers(extra=headers)
    # No response phase follows (as from the NGINX bridge): a half-close is not an abort.
    first_message.protocol_config.response_body_mode = NONE
    out = await run_stream(channel, [first_message, request_body(orjson.dumps({"model": model, "prompt": "hello"}))])
    first = out[0]
    if first.WhichOneof("response") == "immediate_response":
        return int(first.immediate_response.status.code), "", ""
    dest = set_headers(first.request_headers.response)["x-gateway-destination-endpoint"]
    body, _ = streamed_body(out)
    return 200, dest, orjson.loads(body)["model"]


def metric(epp: Epp, name: str, **labels: str) -> float | None:
    return epp.metrics.registry.get_sample_value(name, labels)

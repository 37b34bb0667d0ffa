"""Flow control end to end: client -> real Envoy -> the real `epp` process -> epp-sim.

What a user sees: the order requests are served in by priority, 429 when a queue is full,
503 when a request's time in the queue is up, requests that wait for an empty pool to get
endpoints (scale from zero), and nothing left counted afterwards.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from epp.stack.processes import Proc, bin_path, free_port, wait_port
from tests.e2e.conftest import MODEL, EppProc
from tests.e2e.test_kubernetes import NS, sim_pod
from tests.support.kubeapi import PODS, POOL_V1, KubeApiServer

QUEUE_SIZE = "inference_extension_flow_control_queue_size"
INFLIGHT = "epp_endpoint_inflight_requests"


def fc_config(flow: str, detector: str = "- type: concurrency-detector\n  parameters: {maxConcurrency: 1}") -> str:
    return f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
{detector}
- type: queue-scorer
- type: max-score-picker
saturationDetector: {{pluginRef: {detector.split()[2]}}}
flowControl:
{flow}
"""


def total(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def complete(
    url: str, prompt: str, max_tokens: int = 1, headers: dict | None = None, timeout: float = 60
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens},
        headers=headers or {},
        timeout=timeout,
    )


def test_a_critical_request_overtakes_queued_sheddable_ones_and_a_full_queue_is_429(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(1, time_scale="1")
    flow = "  defaultRequestTTL: 60s\n  priorityBands: [{priority: 100}, {priority: -1, maxRequests: 3}]"
    epp = epp_server(
        fleet.hostports,
        "--config-text",
        fc_config(flow),
        "--workers",
        "2",
        "--static-objectives",
        "critical=100,batch=-1",
    )
    gw = envoy("original-dst", epp)
    done: list[str] = []
    lock = threading.Lock()

    def send(name: str, objective: str, tokens: int) -> int:
        r = complete(gw.url, name, tokens, {"x-gateway-inference-objective": objective})
        with lock:
            done.append(name)
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        busy = pool.submit(send, "busy", "critical", 300)  # holds the one slot (maxConcurrency 1) ~3 s
        until(lambda: total(epp.metrics(), INFLIGHT) == 1, what="the first request in flight")
        batch = [pool.submit(send, f"batch{i}", "batch", 1) for i in range(3)]
        until(lambda: total(epp.metrics(), QUEUE_SIZE) == 3, what="three queued sheddable requests")
        over = complete(gw.url, "one too many", 1, {"x-gateway-inference-objective": "batch"})
        assert over.status_code == 429  # band -1 holds at most 3
        assert b"request rejected pre-queue: queue at capacity" in over.content
        critical = pool.submit(send, "critical", "critical", 1)
        until(lambda: total(epp.metrics(), QUEUE_SIZE) == 4, what="the critical request queued")
        assert busy.result() == 200 and critical.result() == 200 and [f.result() for f in batch] == [200] * 3
    assert done[:2] == ["busy", "critical"]  # queued last, served first
    assert sorted(done[2:]) == ["batch0", "batch1", "batch2"]
    m = epp.metrics()
    assert total(m, QUEUE_SIZE) == 0 and total(m, INFLIGHT) == 0
    assert (
        'inference_extension_flow_control_request_queue_duration_seconds_count{fairness_id="default-flow",'
        'inference_pool="static",model_name="' + MODEL + '",outcome="RejectedCapacity",priority="-1"' in m
    )


def test_ttl_in_queue_is_503_and_a_client_that_leaves_costs_nothing(sim_fleet, epp_server, envoy):
    fleet = sim_fleet(1, time_scale="1")
    epp = epp_server(fleet.hostports, "--config-text", fc_config("  defaultRequestTTL: 1s"))
    gw = envoy("original-dst", epp)
    with ThreadPoolExecutor(4) as pool:
        busy = pool.submit(complete, gw.url, "busy", 300)  # seconds of decode: the slot stays taken
        until(lambda: total(epp.metrics(), INFLIGHT) == 1, what="the first request in flight")
        late = complete(gw.url, "late", 1)
        assert late.status_code == 503
        assert b"request timed out in queue: request evicted from queue: request TTL expired" in late.content
        # A client that gives up while queued: its place is freed, nothing stays counted.
        with pytest.raises(httpx.TimeoutException):
            complete(gw.url, "impatient", 1, timeout=0.3)
        until(lambda: total(epp.metrics(), QUEUE_SIZE) == 0, what="the abandoned request to leave the queue")
        assert busy.result().status_code == 200
    until(lambda: total(epp.metrics(), INFLIGHT) == 0, what="in-flight back to 0")
    m = epp.metrics()
    assert 'outcome="EvictedTTL"' in m and 'outcome="EvictedContextCancelled"' in m


@pytest.fixture
def kubeapi():
    server = KubeApiServer().start()
    yield server
    server.close()


def kube_epp(kubeapi, procs, config: str) -> EppProc:
    started, tmp = procs
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
        "--config-text",
        config,
    ]
    proc = Proc("epp-kube", argv, tmp / f"epp-{g}.log").start()
    started.append(proc)
    wait_port(g, proc=proc.popen)
    return EppProc(proc, g, h, m, argv)


@pytest.mark.parametrize("ttl, expect", [("30s", 200), ("1s", 503)])
def test_scale_from_zero_requests_wait_for_endpoints_within_their_ttl(kubeapi, sim_fleet, procs, envoy, ttl, expect):
    fleet = sim_fleet(2)
    p0, p1 = fleet.ports
    kubeapi.create(
        POOL_V1,
        {
            "metadata": {"name": "pool", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": p0}, {"number": p1}]},
        },
    )
    utilization = "- type: utilization-detector\n  parameters: {queueDepthThreshold: 5}"
    epp = kube_epp(kubeapi, procs, fc_config(f"  defaultRequestTTL: {ttl}", utilization))
    gw = envoy("original-dst", epp, wait=False)  # nothing is routable yet: the pool has no pod
    with ThreadPoolExecutor(50) as pool:
        answers = [pool.submit(complete, gw.url, f"cold {i}", 2) for i in range(50)]
        until(
            lambda: total(epp.metrics(), QUEUE_SIZE) + sum(a.done() for a in answers) == 50,
            what="all 50 requests waiting in the EPP",
        )
        if expect == 200:
            assert total(epp.metrics(), QUEUE_SIZE) == 50
            kubeapi.create(PODS, sim_pod("sim-a", p0))
            kubeapi.create(PODS, sim_pod("sim-b", p1))
        statuses = [a.result().status_code for a in answers]
    assert statuses == [expect] * 50
    if expect == 503:
        assert b"request timed out in queue" in answers[0].result().content
    until(
        lambda: total(epp.metrics(), QUEUE_SIZE) == 0 and total(epp.metrics(), INFLIGHT) == 0,
        what="queue and in-flight back to 0",
    )

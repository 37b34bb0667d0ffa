"""The Gateway API Inference Extension conformance suite's EPP-facing cases, replayed through
real Envoy (override_host, as Istio routes) against `epp --config-name conformance`.

Pods are distinct loopback addresses (127.0.0.2-4), a pod's data-parallel ranks are ports on
one address, and the model servers answer to the suite's model name. Which pod served a
request is read from the server itself (epp-sim's `x-inference-pod`), not from the EPP.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest

from epp.stack.processes import Proc, bin_path, free_ports, wait_port
from tests.e2e.conftest import envoy_starter, epp_starter

MODEL = "conformance-fake-model"
BODY = {"model": MODEL, "prompt": "Write as if you were a critic: San Francisco", "max_tokens": 4}
SELECT = "test-epp-endpoint-selection"
SERVED = "x-conformance-test-served-endpoint"


@dataclass
class Pod:
    ip: str
    ports: list[int]
    name: str

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.ip}:{p}" for p in self.ports]

    def rank_of(self, replica_name: str) -> str:
        """epp-sim names replica i of a pod `<name>-i`: the endpoint that answered."""
        return self.endpoints[int(replica_name.rsplit("-", 1)[1])]


@pytest.fixture(scope="module")
def pods(module_procs) -> list[Pod]:
    started, tmp = module_procs
    layout = [("127.0.0.2", 2, "pod-a"), ("127.0.0.3", 1, "pod-b"), ("127.0.0.4", 1, "pod-c")]
    out = []
    for ip, ranks, name in layout:
        ports = free_ports(ranks, consecutive=True)
        argv = [bin_path("epp-sim"), "--host", ip, "--port", str(ports[0]), "--replicas", str(ranks)]
        argv += ["--pod-name-prefix", name, "--model", MODEL, "--time-scale", "0.05"]
        p = Proc("epp-sim", argv, tmp / f"sim-{name}.log").start()
        started.append(p)
        for port in ports:
            wait_port(port, host=ip, proc=p.popen)
        out.append(Pod(ip, ports, name))
    return out


# The decision travels to the response side in-process, or over IPC to an ext_proc worker.
@pytest.fixture(scope="module", params=["1", "2"], ids=["one-process", "two-workers"])
def gateway(request, pods, module_procs):
    endpoints = [e for pod in pods for e in pod.endpoints]
    epp = epp_starter(module_procs)(endpoints, "--config-name", "conformance", "--workers", request.param)
    gw = envoy_starter(module_procs)("override-host", epp, endpoints, wait=False)
    _wait_routable(gw.url, pods[0].endpoints[0])
    return gw, epp, pods


def _wait_routable(url: str, endpoint: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/v1/completions", json=BODY, headers={SELECT: endpoint}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the gateway never routed a request")


def served_by(pods: list[Pod], replica_name: str) -> str:
    pod = next(p for p in pods if replica_name.startswith(p.name + "-"))
    return pod.rank_of(replica_name)


async def send(url: str, selection: str | None, n: int, concurrency: int) -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)
    headers = {SELECT: selection} if selection is not None else {}
    async with httpx.AsyncClient(timeout=30) as c:

        async def one() -> httpx.Response:
            async with sem:
                return await c.post(f"{url}/v1/completions", json=BODY, headers=headers)

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.parametrize("named", [1, 2, 3])
def test_gateway_following_epp_routing(gateway, named):
    """GatewayFollowingEPPRouting: 100 requests, 10 at a time, reach only the pods the header names."""
    gw, _, pods = gateway
    chosen = pods[:named]
    responses = asyncio.run(send(gw.url, ",".join(p.ip for p in chosen), 100, 10))
    assert [r.status_code for r in responses] == [200] * 100
    hit = Counter(served_by(pods, r.headers["x-inference-pod"]).split(":")[0] for r in responses)
    assert set(hit) <= {p.ip for p in chosen}, hit
    assert json.loads(responses[0].content)["model"] == MODEL


def test_gateway_following_epp_routing_with_data_parallelism(gateway):
    """GatewayFollowingEPPRoutingWithDataParallelism: a selection by IP:port confines traffic to
    those ranks, not just to their pod."""
    gw, _, pods = gateway
    a, b = pods[0], pods[1]
    selection = f"{a.endpoints[1]},{b.endpoints[0]}"
    responses = asyncio.run(send(gw.url, selection, 60, 10))
    assert all(r.status_code == 200 for r in responses)
    hit = Counter(served_by(pods, r.headers["x-inference-pod"]) for r in responses)
    assert set(hit) == {a.endpoints[1], b.endpoints[0]}, hit


def test_gateway_destination_endpoint_served(gateway):
    """GatewayDestinationEndpointServed: the response names the endpoint the gateway served,
    from Envoy's `envoy.lb` metadata (override_host `selected_host_key`), and it is the one
    that answered."""
    gw, _, pods = gateway
    responses = asyncio.run(send(gw.url, ",".join(p.ip for p in pods), 30, 5))
    for r in responses:
        assert r.status_code == 200
        assert r.headers[SERVED] == served_by(pods, r.headers["x-inference-pod"])
    assert len({r.headers[SERVED] for r in responses}) > 1  # not one fixed value


def test_streamed_response_also_names_the_served_endpoint(gateway):
    gw, _, pods = gateway
    body = dict(BODY, stream=True)
    with httpx.stream(
        "POST", f"{gw.url}/v1/completions", json=body, headers={SELECT: pods[2].endpoints[0]}, timeout=30
    ) as r:
        text = r.read()
        assert r.status_code == 200
        assert r.headers[SERVED] == pods[2].endpoints[0]
    assert text.rstrip().endswith(b"data: [DONE]")


def test_no_selection_leaves_no_endpoint(gateway):
    """The test filter keeps nothing when the header is absent or names no pool pod; like the
    reference, an empty filter result is a 429 (`failed to find target endpoint`)."""
    gw, _, _ = gateway
    for headers in ({}, {SELECT: "10.9.9.9"}):
        r = httpx.post(f"{gw.url}/v1/completions", json=BODY, headers=headers, timeout=10)
        assert r.status_code == 429, (headers, r.text)
        assert (
            r.text
            == "inference error: ResourceExhausted - failed to find target endpoint: no endpoint left after filters"
        )


def test_epp_unavailable_fail_open(gateway):
    """EppUnAvailableFailOpen: with the EPP gone, a FailOpen gateway still serves every request
    (round-robin over the pool: nobody picked, so nobody names the served endpoint). The suite
    scales the EPP away, which empties its Service; here Envoy's health check finds it gone."""
    gw, epp, pods = gateway
    epp.proc.stop()
    deadline = time.monotonic() + 10
    while gw.stat("cluster.epp.membership_healthy") and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        responses = asyncio.run(send(gw.url, pods[0].ip, 20, 5))
        assert [r.status_code for r in responses] == [200] * 20
        assert all(SERVED not in r.headers for r in responses)
        assert len({r.headers["x-inference-pod"] for r in responses}) > 1  # not the selection: the gateway chose
    finally:
        epp.restart()  # the module's later tests share this gateway
        _wait_routable(gw.url, pods[0].endpoints[0])

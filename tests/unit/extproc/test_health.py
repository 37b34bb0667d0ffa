"""gRPC health with the reference's service names, on the health port and (optionally) the ext_proc port."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.datalayer.endpoint import Endpoint
from epp.observability.health import HealthState
from tests.support.inproc import running_epp

SERVICES = ["", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor", "liveness", "readiness"]
SERVING = health_pb2.HealthCheckResponse.SERVING


async def check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_every_reference_service_name_is_serving_on_both_ports():
    async with running_epp([Endpoint(name="a", address="127.0.0.1", port=1)], health_checking=True) as (epp, _ch):
        for service in SERVICES:
            assert await check(epp.opts.grpc_health_port, service) == SERVING
            assert await check(epp.opts.grpc_port, service) == SERVING


async def test_ext_proc_port_has_no_health_service_without_health_checking():
    async with running_epp([Endpoint(name="a", address="127.0.0.1", port=1)]) as (epp, _ch):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await check(epp.opts.grpc_port, "")
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_leader_election_semantics():
    synced = {"v": True}
    h = HealthState(lambda: synced["v"], leader_election=True)
    h.is_leader = False
    assert h.status("liveness") == SERVING
    assert h.status("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert h.status("envoy.service.ext_proc.v3.ExternalProcessor") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert h.status("something-else") == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    h.is_leader = True
    assert h.status("") == SERVING
    synced["v"] = False
    assert h.status("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert HealthState(lambda: False).status("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_readyz_says_why_in_text_and_metrics_still_served():
    import httpx

    async with running_epp([Endpoint(name="a", address="127.0.0.1", port=1)]) as (epp, _ch):
        base = f"http://127.0.0.1:{epp.opts.metrics_port}"
        async with httpx.AsyncClient() as c:
            r = await c.get(base + "/readyz")
            assert r.status_code == 200 and r.text == "ready; 1 endpoints; synced\n"
            assert (await c.get(base + "/healthz")).text == "ok\n"
            assert "inference_extension_info" in (await c.get(base + "/metrics")).text
            epp.datastore.clear()
            r = await c.get(base + "/readyz")
            assert r.status_code == 503 and r.text == "not ready; 0 endpoints; not synced\n"

"""gRPC health over real gRPC: standard answers for unknown names, and Watch streaming every change."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.datalayer.endpoint import Endpoint
from epp.observability.health import KNOWN_SERVICES, HealthServicer, HealthState
from epp.stack.processes import free_port
from tests.support.inproc import running_epp

S = health_pb2.HealthCheckResponse
REQ = health_pb2.HealthCheckRequest


def stub(port: int):
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return ch, health_pb2_grpc.HealthStub(ch)


class Watching:
    """Reads a Watch stream into a queue, so waiting with a timeout does not cancel the RPC."""

    def __init__(self, call) -> None:
        self.call = call
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self.call:
            self.queue.put_nowait(msg.status)

    def cancel(self) -> None:
        self.call.cancel()
        self.task.cancel()


async def next_status(w, timeout: float = 5.0) -> int:
    if not isinstance(w, Watching):
        msg = await asyncio.wait_for(w.read(), timeout)
        assert msg is not grpc.aio.EOF
        return msg.status
    return await asyncio.wait_for(w.queue.get(), timeout)


@pytest.fixture
async def epp():
    async with running_epp([Endpoint(name="a", address="127.0.0.1", port=1)], health_checking=True) as (e, _ch):
        yield e


async def test_unknown_service_is_not_found_on_both_ports(epp):
    for port in (epp.opts.grpc_health_port, epp.opts.grpc_port):
        ch, h = stub(port)
        async with ch:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await h.Check(REQ(service="no-such-service"), timeout=5)
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND
            for name in KNOWN_SERVICES:  # the reference's names keep working
                assert (await h.Check(REQ(service=name), timeout=5)).status == S.SERVING
            listed = await h.List(health_pb2.HealthListRequest(), timeout=5)
            assert set(listed.statuses) == KNOWN_SERVICES


async def test_watch_streams_readiness_changes(epp):
    ch, h = stub(epp.opts.grpc_health_port)
    async with ch:
        ready = Watching(h.Watch(REQ(service="readiness")))
        live = Watching(h.Watch(REQ(service="liveness")))
        assert await next_status(ready) == S.SERVING
        assert await next_status(live) == S.SERVING
        epp.health.draining = True  # what SIGTERM does
        assert await next_status(ready) == S.NOT_SERVING
        with pytest.raises(TimeoutError):  # liveness did not change: nothing is sent
            await next_status(live, timeout=1.0)
        epp.health.draining = False
        assert await next_status(ready) == S.SERVING
        epp.datastore.clear()  # not synced: noticed without an explicit notification
        assert await next_status(ready) == S.NOT_SERVING
        assert await next_status(live) == S.NOT_SERVING
        epp.datastore.mark_synced()
        assert await next_status(ready) == S.SERVING
        ready.cancel()
        live.cancel()


async def test_watch_of_an_unknown_service_says_so_and_stays_open(epp):
    ch, h = stub(epp.opts.grpc_health_port)
    async with ch:
        call = Watching(h.Watch(REQ(service="no-such-service")))
        assert await next_status(call) == S.SERVICE_UNKNOWN
        with pytest.raises(TimeoutError):
            await next_status(call, timeout=1.0)
        call.cancel()


async def test_watch_streams_are_bounded_and_released():
    servicer = HealthServicer(HealthState(lambda: True), max_watches=2)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        ch, h = stub(port)
        async with ch:
            calls = [h.Watch(REQ(service="")) for _ in range(2)]
            for c in calls:
                assert await next_status(c) == S.SERVING
            extra = h.Watch(REQ(service=""))
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await extra.read()
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await h.Check(REQ(service=""), timeout=5)).status == S.SERVING  # Check is not held up
            for c in calls:
                c.cancel()
            for _ in range(100):
                if servicer.watches == 0:
                    break
                await asyncio.sleep(0.05)
            assert servicer.watches == 0
            again = h.Watch(REQ(service=""))
            assert await next_status(again) == S.SERVING
            again.cancel()
    finally:
        await server.stop(0)


def test_status_rules():
    synced = {"v": True}
    h = HealthState(lambda: synced["v"], leader_election=True)
    h.is_leader = False
    assert (h.status("liveness"), h.status("readiness"), h.status("")) == (S.SERVING, S.NOT_SERVING, S.NOT_SERVING)
    h.is_leader = True
    assert h.status("inference-extension") == S.SERVING
    h.draining = True
    assert (h.status("liveness"), h.status("readiness")) == (S.SERVING, S.NOT_SERVING)
    assert h.status("typo") == S.SERVICE_UNKNOWN
    plain = HealthState(lambda: synced["v"])
    synced["v"] = False
    assert plain.status("liveness") == S.NOT_SERVING and plain.status("readiness") == S.NOT_SERVING

"""The `epp` process's life: signals it ignores, and the graceful drain on SIGTERM.

Real processes: the `epp` CLI (plaintext ext_proc so the test can drive streams itself with
tests/support/extproc_client.py) in front of an epp-sim fleet.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import MODEL
from tests.support import extproc_client as xc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
BODY = f'{{"model": "{MODEL}", "prompt": "hello", "max_tokens": 1}}'.encode()


def routed_to(responses) -> str | None:
    for r in responses:
        if r.WhichOneof("response") == "request_headers":
            return xc.set_headers(r.request_headers.response).get("x-gateway-destination-endpoint")
    return None


async def pick(port: int) -> str | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        out = await xc.run_stream(ch, [xc.request_headers(), xc.request_body(BODY)])
    return routed_to(out)


def test_sighup_and_sigusr_are_logged_and_ignored(sim_fleet, epp_server):
    fleet = sim_fleet(1)
    epp = epp_server(fleet.hostports, tls=False)
    assert asyncio.run(pick(epp.grpc_port)) == fleet.hostports[0]
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        epp.proc.popen.send_signal(sig)
        time.sleep(0.2)
        assert epp.proc.alive, f"{sig.name} killed the EPP"
    assert asyncio.run(pick(epp.grpc_port)) == fleet.hostports[0]
    assert httpx.get(f"http://127.0.0.1:{epp.metrics_port}/metrics", timeout=5).status_code == 200
    log = epp.proc.log_path.read_text()
    for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"):
        assert f"received {name}: ignored" in log


async def readiness(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        h = health_pb2_grpc.HealthStub(ch)
        return (await h.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5)).status


async def open_routed_stream(port: int, ch: grpc.aio.Channel) -> tuple[xc.Conversation, str | None]:
    """A stream whose request has been routed and whose response has not come yet: in flight."""
    conv = xc.Conversation(ch, timeout=60)
    await conv.send(xc.request_headers())
    await conv.send(xc.request_body(BODY))
    first = await conv.recv()
    await conv.recv()  # the request body response
    return conv, routed_to([first])


async def finish(conv: xc.Conversation) -> list:
    await conv.send(xc.response_headers({":status": "200", "content-type": "application/json"}))
    await conv.send(xc.response_body(b'{"choices": [{"text": "hi"}]}', eos=True))
    return await conv.close()


def test_sigterm_drains_not_ready_first_new_streams_answered_in_flight_finish_exit_0(sim_fleet, epp_server):
    fleet = sim_fleet(1)
    epp = epp_server(fleet.hostports, "--graceful-shutdown-timeout=30s", tls=False)
    popen = epp.proc.popen

    async def scenario():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.grpc_port}") as ch:
            assert await readiness(epp.health_port) == SERVING
            in_flight, where = await open_routed_stream(epp.grpc_port, ch)
            assert where == fleet.hostports[0]
            popen.send_signal(signal.SIGTERM)
            for _ in range(100):  # readiness goes first
                if await readiness(epp.health_port) == NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            assert await readiness(epp.health_port) == NOT_SERVING
            async with httpx.AsyncClient() as c:
                r = await c.get(f"http://127.0.0.1:{epp.metrics_port}/readyz")
            assert r.status_code == 503 and "draining" in r.text
            # A stream opened during the drain is routed, not refused; it finishes normally too.
            late, late_where = await open_routed_stream(epp.grpc_port, ch)
            assert late_where == fleet.hostports[0]
            assert [x.WhichOneof("response") for x in await finish(late)] == ["response_headers", "response_body"]
            assert popen.poll() is None, "exited with a stream still in flight"
            # The stream that was in flight at SIGTERM completes.
            assert [x.WhichOneof("response") for x in await finish(in_flight)] == ["response_headers", "response_body"]

    asyncio.run(scenario())
    assert popen.wait(timeout=15) == 0
    log = epp.proc.log_path.read_text()
    assert "draining: reporting not ready" in log and "drained after" in log


def test_streams_still_open_at_the_drain_deadline_are_cut_and_the_exit_is_clean(sim_fleet, epp_server):
    fleet = sim_fleet(1)
    epp = epp_server(fleet.hostports, "--graceful-shutdown-timeout=1s", tls=False)
    popen = epp.proc.popen

    async def scenario():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.grpc_port}") as ch:
            stuck, _ = await open_routed_stream(epp.grpc_port, ch)
            popen.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError):
                await stuck.recv()  # never answered: the server goes away at the deadline

    asyncio.run(scenario())
    assert popen.wait(timeout=15) == 0
    assert (
        "drain deadline (--graceful-shutdown-timeout 1s) reached: 1 streams in flight are cut"
        in epp.proc.log_path.read_text()
    )


def test_an_idle_epp_stops_at_once_on_sigterm(sim_fleet, epp_server):
    fleet = sim_fleet(1)
    epp = epp_server(fleet.hostports, tls=False)
    epp.proc.popen.send_signal(signal.SIGTERM)
    assert epp.proc.popen.wait(timeout=10) == 0
    assert "drained after 0.0s" in epp.proc.log_path.read_text()

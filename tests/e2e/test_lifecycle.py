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

from tests.e2e.conftest import MODEL
from tests.support import extproc_client as xc

BODY = ('{"model": "%s", "prompt": "hello", "max_tokens": 1}' % MODEL).encode()


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

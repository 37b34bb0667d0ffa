"""The real `epp` process under many idle metrics connections: threads and connections stay bounded."""

from __future__ import annotations

import socket
import time

import httpx

from epp.observability.http import HttpLimits
from tests.unit.observability.conftest import established


def test_many_idle_connections_cost_no_threads_and_scrapes_still_work(epp_process):
    epp = epp_process()
    assert httpx.get(f"http://127.0.0.1:{epp.metrics_port}/metrics", timeout=5).status_code == 200
    baseline = epp.threads()
    idle = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", epp.metrics_port), timeout=5)
            idle.append(s)
        time.sleep(0.5)
        times = []
        for _ in range(10):
            r = httpx.get(f"http://127.0.0.1:{epp.metrics_port}/metrics", timeout=5)
            assert r.status_code == 200 and "inference_extension_info" in r.text
            times.append(r.elapsed.total_seconds())
        assert epp.threads() <= baseline + 1
        assert established(epp.metrics_port) <= HttpLimits().max_connections
        print(
            f"threads {baseline} -> {epp.threads()}, open metrics connections {established(epp.metrics_port)}, "
            f"scrape max {max(times) * 1000:.1f} ms with 300 idle connections"
        )
    finally:
        for s in idle:
            s.close()
    assert epp.proc.alive

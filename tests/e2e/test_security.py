"""Security parity with the reference, end to end with the real `epp` process.

Metrics endpoint auth: bearer tokens checked by TokenReview and SubjectAccessReview against the
project's Kubernetes test API server (tests/support/kubeapi.py answers both reviews from its
`tokens` and `grants`, as a real API server does from its authenticators and RBAC).
"""

from __future__ import annotations

import httpx
import pytest

from epp.stack.processes import Proc, bin_path, free_port, wait_port
from tests.support.kubeapi import PODS, POOL_V1, KubeApiServer

NS = "default"
PROMETHEUS = {"username": "system:serviceaccount:monitoring:prometheus", "uid": "u-1",
              "groups": ["system:serviceaccounts", "system:serviceaccounts:monitoring"]}
ALICE = {"username": "alice", "uid": "u-2", "groups": ["system:authenticated"]}


@pytest.fixture
def kubeapi():
    server = KubeApiServer().start()
    server.tokens.update({"prom-token": PROMETHEUS, "alice-token": ALICE, "group-token": {
        "username": "bob", "groups": ["metrics-readers"]}})
    server.grants.update({(PROMETHEUS["username"], "get", "/metrics"), ("group:metrics-readers", "get", "/metrics")})
    yield server
    server.close()


def start_epp(procs, *args: str) -> tuple[Proc, int]:
    started, tmp = procs
    g, h, m = free_port(), free_port(), free_port()
    argv = [bin_path("epp"), "--grpc-port", str(g), "--grpc-health-port", str(h), "--metrics-port", str(m),
            "--secure-serving=false", "-v=3", *args]
    p = Proc("epp", argv, tmp / f"epp-{g}.log").start()
    started.append(p)
    wait_port(m, proc=p.popen)
    return p, m


def kube_epp(procs, kubeapi: KubeApiServer, *args: str) -> tuple[Proc, int]:
    kubeapi.create(POOL_V1, {"metadata": {"name": "pool", "namespace": NS},
                             "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": 1}]}})
    kubeapi.create(PODS, {"metadata": {"name": "p", "namespace": NS, "labels": {"app": "sim"}},
                          "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}})
    return start_epp(procs, "--pool-name", "pool", "--pool-namespace", NS, "--kube-api-server", kubeapi.url, *args)


def scrape(port: int, token: str | None = None, path: str = "/metrics", auth: str | None = None) -> httpx.Response:
    headers = {"Authorization": auth or f"Bearer {token}"} if (token or auth) else {}
    return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10)


def test_metrics_need_an_allowed_bearer_token_in_kubernetes_mode_by_default(procs, kubeapi):
    _proc, port = kube_epp(procs, kubeapi)
    r = scrape(port)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert scrape(port, auth="Basic YWxpY2U6cHc=").status_code == 401
    assert scrape(port, "not-a-token").status_code == 401
    r = scrape(port, "alice-token")
    assert r.status_code == 403 and "Authorization denied for user alice" in r.text
    r = scrape(port, "prom-token")
    assert r.status_code == 200 and "inference_extension_info" in r.text
    assert scrape(port, "group-token").status_code == 200  # allowed through a group binding
    # Probes carry no token: /healthz and /readyz stay open.
    assert scrape(port, path="/healthz").status_code == 200
    assert scrape(port, path="/readyz").status_code in (200, 503)


def test_review_answers_are_cached_so_a_scrape_storm_costs_one_review(procs, kubeapi):
    _proc, port = kube_epp(procs, kubeapi)
    before_t, before_a = kubeapi.reviews("token"), kubeapi.reviews("access")
    with httpx.Client(timeout=10) as c:
        for _ in range(30):
            assert c.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer prom-token"}
                         ).status_code == 200
            assert c.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer not-a-token"}
                         ).status_code == 401
    assert kubeapi.reviews("token") - before_t == 2  # one per distinct token
    assert kubeapi.reviews("access") - before_a == 1  # only the authenticated one is asked about


def test_auth_can_be_turned_off(procs, kubeapi):
    _proc, port = kube_epp(procs, kubeapi, "--metrics-endpoint-auth=false")
    assert scrape(port).status_code == 200


def test_static_mode_serves_metrics_openly_and_says_so(procs):
    proc, port = start_epp(procs, "--static-endpoints", "127.0.0.1:1")
    assert scrape(port).status_code == 200
    log = proc.log_path.read_text()
    assert "/metrics is served without authentication: static mode has no Kubernetes API" in log


def test_static_mode_with_auth_asked_for_and_a_cluster_enforces_it(procs, kubeapi):
    _proc, port = start_epp(procs, "--static-endpoints", "127.0.0.1:1", "--metrics-endpoint-auth",
                            "--kube-api-server", kubeapi.url)
    assert scrape(port).status_code == 401
    assert scrape(port, "alice-token").status_code == 403
    assert scrape(port, "prom-token").status_code == 200
    # The API server goes away: a cached answer still serves, a new token gets 500 (cannot check it).
    kubeapi.stop()
    assert scrape(port, "prom-token").status_code == 200
    r = scrape(port, "group-token")
    assert r.status_code == 500 and "Authentication failed" in r.text
    kubeapi.start()
    assert scrape(port, "group-token").status_code == 200


def test_auth_asked_for_without_any_cluster_is_a_start_up_error(tmp_path):
    import subprocess

    env = {"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([bin_path("epp"), "--static-endpoints", "127.0.0.1:1", "--metrics-endpoint-auth=true",
                        "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epp: error:")]
    assert lines and "--metrics-endpoint-auth needs a Kubernetes API to check tokens with" in lines[0]
    assert "Traceback" not in r.stderr

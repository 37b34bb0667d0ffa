"""A real Prometheus (Debian's package) scraping a live EPP and its epp-sim fleet under load:
every query of the dashboard (deploy/observability/dashboard.json) and every rule of
deploy/observability/rules.yaml returns data, and every rule evaluates without error.

The EPP runs as in production: Kubernetes mode (the test API server), leader election,
flow control (the default config), two ext_proc workers, behind real Envoy.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from epp.stack.processes import Proc, bin_path, free_port, wait_port
from tests.e2e.conftest import MODEL, EppProc
from tests.e2e.test_kubernetes import NS, sim_pod
from tests.support.kubeapi import PODS, POOL_V1, KubeApiServer

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RATE_WINDOW = "30s"  # what $__rate_interval stands for here: a few 1 s scrapes
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[-+0-9.e]+\s*$")


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_WINDOW)
            expr = re.sub(r"\$(model|pool|job)\b", ".*", expr)
            out.append((panel["title"], expr))
    return out


def rules() -> list[dict]:
    groups = yaml.safe_load((OBSERVABILITY / "rules.yaml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def signal(rule: dict) -> str:
    """What a rule looks at: a recording rule's own series, an alert's expression without its threshold."""
    if "record" in rule:
        return rule["record"]
    expr = " ".join(rule["expr"].split())
    stripped = COMPARISON.sub("", expr)
    assert stripped != expr, f"alert {rule['alert']} is not `<signal> <comparison> <threshold>`"
    return stripped


@pytest.fixture
def kubeapi():
    server = KubeApiServer().start()
    yield server
    server.close()


def start_epp(procs, kubeapi: KubeApiServer, ports: list[int]) -> EppProc:
    started, tmp = procs
    kubeapi.create(
        POOL_V1,
        {
            "metadata": {"name": "pool", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": p} for p in ports]},
        },
    )
    for i, port in enumerate(ports):
        kubeapi.create(PODS, sim_pod(f"sim-{i}", port))
    g, h, m = free_port(), free_port(), free_port()
    argv = [bin_path("epp"), "--pool-name", "pool", "--pool-namespace", NS, "--kube-api-server", kubeapi.url]
    argv += ["--grpc-port", str(g), "--grpc-health-port", str(h), "--metrics-port", str(m)]
    argv += ["--metrics-endpoint-auth=false", "--ha-enable-leader-election", "--workers", "2", "-v=2"]
    proc = Proc("epp-kube", argv, tmp / f"epp-{g}.log").start()
    started.append(proc)
    wait_port(g, proc=proc.popen)
    return EppProc(proc, g, h, m, argv)


def start_prometheus(procs, epp: EppProc, sims: list[str]) -> str:
    started, tmp = procs
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make install` installs Debian's package"
    shutil.copy(OBSERVABILITY / "rules.yaml", tmp / "rules.yaml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": [
            {"job_name": "epp", "static_configs": [{"targets": [f"127.0.0.1:{epp.metrics_port}"]}]},
            {"job_name": "vllm", "static_configs": [{"targets": sims}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}"]
    argv += [f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    started.append(Proc("prometheus", argv, tmp / "prometheus.log").start())
    wait_port(port, proc=started[-1].popen, timeout=30)
    return f"http://127.0.0.1:{port}"


async def load(url: str, seconds: float) -> None:
    """Streamed and unstreamed completions and chats sharing a prefix, plus a few bad requests."""
    system = "You are a terse assistant for the benchmark. " * 20
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def client(k: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                if i % 10 == 0:
                    await c.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
                elif k % 2:
                    body = {
                        "model": MODEL,
                        "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"q{k}-{i}"}],
                        "max_tokens": 8,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    }
                    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        await r.aread()
                else:
                    await c.post(
                        "/v1/completions", json={"model": MODEL, "prompt": system + f"q{k}-{i}", "max_tokens": 8}
                    )

        await asyncio.gather(*(client(k) for k in range(6)))


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def test_dashboard_and_rules_return_data_from_a_live_epp(kubeapi, sim_fleet, procs, envoy):
    fleet = sim_fleet(3)
    epp = start_epp(procs, kubeapi, fleet.ports)
    gw = envoy("original-dst", epp)
    prom = start_prometheus(procs, epp, fleet.hostports)
    asyncio.run(load(gw.url, 25))

    # Every target is scraped; then every query and rule has had samples for a while.
    up = {r["metric"]["job"]: r["value"][1] for r in query(prom, "min by (job) (up)")}
    assert up == {"epp": "1", "vllm": "1"}, up
    time.sleep(3)  # a few rule evaluations after the load

    empty = [(title, expr) for title, expr in dashboard_queries() if not query(prom, expr)]
    assert not empty, f"dashboard panels without data: {empty}"

    no_data = [(r.get("record") or r["alert"], signal(r)) for r in rules() if not query(prom, signal(r))]
    assert not no_data, f"rules whose signal has no data: {no_data}"

    evaluated = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    states = {r["name"]: (r["health"], r.get("lastError", "")) for g in evaluated for r in g["rules"]}
    assert set(states) == {r.get("record") or r["alert"] for r in rules()}
    assert all(h == "ok" for h, _ in states.values()), states
    # The one alert this load raises: every request that was not even JSON failed, so the error
    # ratio of the model-less requests (an empty label: absent in Prometheus) is 1 (pending: it
    # fires after 5 minutes). A healthy pool raises nothing else; each alert's firing is tested
    # in rules-test.yaml.
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    raised = [(a["labels"]["alertname"], a["labels"].get("model_name", ""), a["state"]) for a in alerts]
    assert raised == [("EppHighErrorRatio", "", "pending")], raised

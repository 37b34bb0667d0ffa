"""End to end: client -> real nginx + njs (deploy/nginx) -> picker (epp-bridge or the EPP's own port) -> EPP -> epp-sim."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from epp.bridge import nginxconf
from epp.stack.processes import Proc, bin_path, free_port, wait_port
from tests.e2e.conftest import MODEL

LOG_LINE = re.compile(r"rid=(\S+) epp_outcome=(\S*) epp_endpoint=(\S*) upstream=(\S*)")


class Nginx:
    def __init__(self, proc: Proc, port: int, prefix: Path) -> None:
        self.proc, self.port, self.prefix = proc, port, prefix
        self.url = f"http://127.0.0.1:{port}"

    def log_entry(self, rid: str) -> tuple[str, str, str]:
        """(epp_outcome, epp_endpoint, upstream) of one request, from the access log."""
        deadline = time.monotonic() + 5
        while True:  # nginx writes the line after the response went out
            for m in LOG_LINE.finditer((self.prefix / "access.log").read_text()):
                if m.group(1) == rid:
                    return m.group(2), m.group(3), m.group(4)
            if time.monotonic() > deadline:
                raise AssertionError(f"request {rid} not in the access log")
            time.sleep(0.05)


class Bridge:
    def __init__(self, proc: Proc, port: int, metrics_port: int) -> None:
        self.proc, self.port, self.metrics_port = proc, port, metrics_port
        self.url = f"http://127.0.0.1:{port}/"

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return metric_value(text, name)


def metric_value(text: str, series: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series + " ") or line.startswith(series + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def inflight(epp) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in epp.metrics().splitlines()
        if line.startswith("epp_endpoint_inflight_requests{")
    ]


@pytest.fixture
def bridge(procs):
    started, tmp = procs

    def start(*args: str) -> Bridge:
        port, mport = free_port(), free_port()
        p = Proc(
            "epp-bridge",
            [bin_path("epp-bridge"), "--port", str(port), "--metrics-port", str(mport), *args],
            tmp / f"bridge-{port}.log",
        ).start()
        started.append(p)
        wait_port(port, proc=p.popen)
        return Bridge(p, port, mport)

    return start


@pytest.fixture
def nginx(procs):
    started, tmp = procs

    def start(picker_url: str, epp_port: int, pool: list[str], failure_mode: str = "close") -> Nginx:
        port = free_port()
        prefix = tmp / f"nginx-{port}"
        nginxconf.write(
            nginxconf.NginxSettings(
                listen_port=port, picker_url=picker_url, epp_port=epp_port, pool=pool, failure_mode=failure_mode
            ),
            prefix,
        )
        p = Proc("nginx", nginxconf.command(prefix), tmp / f"nginx-{port}.out").start()
        started.append(p)
        wait_port(port, proc=p.popen)
        return Nginx(p, port, prefix)

    return start


def post(url: str, path: str, payload: dict, **kw) -> httpx.Response:
    rid = str(uuid.uuid4())
    r = httpx.post(
        url + path,
        content=orjson.dumps(payload),
        headers={"content-type": "application/json", "x-request-id": rid},
        timeout=60,
        **kw,
    )
    r.rid = rid  # type: ignore[attr-defined]
    return r


def assert_served_by_pick(gw: Nginx, r: httpx.Response) -> str:
    outcome, endpoint, upstream = gw.log_entry(r.rid)  # type: ignore[attr-defined]
    assert outcome == "picked"
    assert upstream == endpoint
    assert r.headers["x-inference-port"] == endpoint.rsplit(":", 1)[1]
    return endpoint


def exercise_apis(gw: Nginx) -> set[str]:
    """Completions and chat, streaming and not; each served by the endpoint the EPP picked."""
    picked = set()
    for path, payload in [
        ("/v1/completions", {"prompt": "Say hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Say hi"}]}),
    ]:
        base = {"model": MODEL, "max_tokens": 4, "ignore_eos": True, **payload}
        r = post(gw.url, path, base)
        assert r.status_code == 200, r.text
        assert r.json()["object"] == ("text_completion" if "prompt" in payload else "chat.completion")
        assert r.json()["usage"]["completion_tokens"] == 4
        picked.add(assert_served_by_pick(gw, r))

        r = post(gw.url, path, {**base, "stream": True, "stream_options": {"include_usage": True}})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert orjson.loads(events[-2])["usage"]["completion_tokens"] == 4
        picked.add(assert_served_by_pick(gw, r))
    return picked


@pytest.fixture
def bridged(sim_fleet, epp_server, bridge, nginx):
    fleet = sim_fleet(2)
    epp = epp_server(fleet.hostports)
    br = bridge()
    gw = nginx(br.url, epp.grpc_port, fleet.hostports)
    return fleet, epp, br, gw


def test_apis_through_nginx_bridge_epp_are_served_by_the_picked_pod(bridged):
    fleet, _epp, br, gw = bridged
    picked = exercise_apis(gw)
    assert picked <= set(fleet.hostports)
    assert br.metric('epp_bridge_requests_total{code="200",mode="bridge"}') == 4
    # A query string and the original path reach the model server / the EPP unchanged.
    r = post(
        gw.url,
        "/v1/chat/completions?api-version=1",
        {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "q"}]},
    )
    assert r.status_code == 200
    assert_served_by_pick(gw, r)


def test_1mb_prompt_reaches_the_epp_and_the_server(bridged):
    fleet, epp, _br, gw = bridged
    blob = "".join(f"{i:08d}" for i in range(128 * 1024))  # 1 MiB, kept out of the token count
    payload = {"model": MODEL, "prompt": "short prompt", "max_tokens": 2, "user": blob}
    r = post(gw.url, "/v1/completions", payload)
    assert r.status_code == 200, r.text[:300]
    assert_served_by_pick(gw, r)
    direct = httpx.post(f"http://{fleet.hostports[0]}/v1/completions", json=payload, timeout=60).json()
    assert r.json()["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"]
    # The EPP parsed the whole body (its request-size histogram saw every byte).
    size = metric_value(epp.metrics(), "inference_objective_request_sizes_sum")
    assert size == len(orjson.dumps(payload))


def test_epp_immediate_response_reaches_the_client(bridged):
    _fleet, _epp, _br, gw = bridged
    # The original path reaches the EPP: a chat body on the completions path is a bad completions request.
    r = post(gw.url, "/v1/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    assert r.text == "inference error: BadRequest - invalid completions request: must have prompt field"
    assert gw.log_entry(r.rid)[0] == "epp:400"  # type: ignore[attr-defined]
    r = httpx.post(gw.url + "/v1/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.text.startswith("inference error: BadRequest - error unmarshaling")
    assert "x-inference-pod" not in r.headers


def test_epp_down_fail_open_serves_and_fail_close_answers_5xx(sim_fleet, bridge, nginx):
    fleet = sim_fleet(2)
    br = bridge()
    dead_epp = free_port()
    open_gw = nginx(br.url, dead_epp, fleet.hostports, failure_mode="open")
    close_gw = nginx(br.url, dead_epp, fleet.hostports, failure_mode="close")
    payload = {"model": MODEL, "prompt": "hello", "max_tokens": 2}

    r = post(open_gw.url, "/v1/completions", payload)
    assert r.status_code == 200 and r.headers["x-inference-pod"].startswith("sim-")
    outcome, endpoint, upstream = open_gw.log_entry(r.rid)  # type: ignore[attr-defined]
    assert (outcome, endpoint) == ("failopen:unreachable", "") and upstream in fleet.hostports

    r = post(close_gw.url, "/v1/completions", payload)
    assert r.status_code == 502
    assert r.text == f"no inference endpoint available: EPP 127.0.0.1:{dead_epp} unreachable\n"
    assert r.headers["x-epp-bridge-error"] == "unreachable"
    assert br.metric('epp_bridge_errors_total{cause="unreachable",mode="bridge"}') == 2

    # The picker itself down: same two behaviours.
    no_picker = f"http://127.0.0.1:{free_port()}/"
    r = post(nginx(no_picker, dead_epp, fleet.hostports, failure_mode="open").url, "/v1/completions", payload)
    assert r.status_code == 200 and r.headers["x-inference-pod"].startswith("sim-")
    r = post(nginx(no_picker, dead_epp, fleet.hostports, failure_mode="close").url, "/v1/completions", payload)
    assert r.status_code == 502 and r.headers["x-epp-bridge-error"] == "picker_unreachable"


async def _hammer(url: str, n: int, concurrency: int, headers: dict[str, str]) -> list[int]:
    bodies = [
        orjson.dumps({"model": MODEL, "prompt": f"request {i} " * (i % 7 + 1), "max_tokens": 1}) for i in range(n)
    ]
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as c:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                r = await c.post(url, content=body, headers=headers)
                statuses.append(r.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_2000_picks_through_the_bridge_leave_no_inflight_load(sim_fleet, epp_server, bridge):
    fleet = sim_fleet(2)
    epp = epp_server(fleet.hostports)
    br = bridge()
    headers = {
        "x-epp-host": "127.0.0.1",
        "x-epp-port": str(epp.grpc_port),
        "x-original-path": "/v1/completions",
        "content-type": "application/json",
    }
    statuses = asyncio.run(_hammer(br.url, 2000, 16, headers))
    assert statuses == [200] * 2000
    assert inflight(epp) == [0.0, 0.0]
    text = epp.metrics()
    assert metric_value(text, "inference_objective_request_total") == 2000
    assert metric_value(text, "inference_objective_running_requests") == 0
    assert br.metric('epp_bridge_requests_total{code="200",mode="bridge"}') == 2000
    assert br.metric('epp_bridge_grpc_channels{mode="bridge"}') == 1  # one pooled channel, not 2,000


def _cert_for_localhost(directory: Path) -> Path:
    """A CA-less self-signed certificate valid for 127.0.0.1, for --ca-file verification."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "epp-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir()
    (directory / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory


def _pick(br: Bridge, epp_port: int) -> httpx.Response:
    return httpx.post(
        br.url,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-epp-host": "127.0.0.1", "x-epp-port": str(epp_port)},
        timeout=30,
    )


def test_bridge_tls_plaintext_verified_and_epp_restart(sim_fleet, epp_server, bridge, tmp_path):
    fleet = sim_fleet(2)
    tls_epp = epp_server(fleet.hostports)  # self-signed, no names: verification must be off
    plain_epp = epp_server(fleet.hostports, tls=False)
    certs = _cert_for_localhost(tmp_path / "certs")
    named_epp = epp_server(fleet.hostports, "--cert-path", str(certs))
    insecure, plaintext = bridge(), bridge("--plaintext")
    verifying = bridge("--ca-file", str(certs / "tls.crt"))

    for br, epp in [(insecure, tls_epp), (plaintext, plain_epp), (verifying, named_epp), (insecure, named_epp)]:
        r = _pick(br, epp.grpc_port)
        assert r.status_code == 200, r.text
        assert r.headers["x-gateway-destination-endpoint"] in fleet.hostports
    # Mode mismatches fail as unreachable, never as a wrong pick.
    assert _pick(plaintext, tls_epp.grpc_port).status_code == 502
    assert _pick(verifying, tls_epp.grpc_port).status_code == 502

    # The EPP restarts (with a new self-signed certificate): the pooled channel reconnects.
    tls_epp.restart()
    deadline = time.monotonic() + 15
    while (r := _pick(insecure, tls_epp.grpc_port)).status_code != 200 and time.monotonic() < deadline:
        assert r.status_code == 502
        time.sleep(0.1)
    assert r.status_code == 200
    assert insecure.metric('epp_bridge_grpc_channels{mode="bridge"}') == 2


def test_epp_http_picker_port_behind_nginx(sim_fleet, epp_server, nginx):
    fleet = sim_fleet(2)
    picker_port = free_port()
    epp = epp_server(fleet.hostports, "--http-picker-port", str(picker_port))
    wait_port(picker_port, proc=epp.proc.popen)
    gw = nginx(f"http://127.0.0.1:{picker_port}/", epp.grpc_port, fleet.hostports)
    assert exercise_apis(gw) <= set(fleet.hostports)
    r = post(gw.url, "/v1/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "must have prompt field" in r.text

    statuses = asyncio.run(
        _hammer(f"http://127.0.0.1:{picker_port}/v1/completions", 500, 8, {"content-type": "application/json"})
    )
    assert statuses == [200] * 500
    assert inflight(epp) == [0.0, 0.0]
    text = epp.metrics()
    assert metric_value(text, "inference_objective_running_requests") == 0
    assert metric_value(text, 'epp_bridge_requests_total{code="200",mode="inproc"}') == 504

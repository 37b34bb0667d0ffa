"""Security parity with the reference, end to end with the real `epp` process.

Metrics endpoint auth: bearer tokens checked by TokenReview and SubjectAccessReview against the
project's Kubernetes test API server (tests/support/kubeapi.py answers both reviews from its
`tokens` and `grants`, as a real API server does from its authenticators and RBAC).
"""

from __future__ import annotations

import time

import httpx
import pytest

from epp.stack.processes import Proc, bin_path, free_port, wait_port
from tests.support.kubeapi import PODS, POOL_V1, KubeApiServer

NS = "default"
PROMETHEUS = {
    "username": "system:serviceaccount:monitoring:prometheus",
    "uid": "u-1",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:monitoring"],
}
ALICE = {"username": "alice", "uid": "u-2", "groups": ["system:authenticated"]}


@pytest.fixture
def kubeapi():
    server = KubeApiServer().start()
    server.tokens.update(
        {
            "prom-token": PROMETHEUS,
            "alice-token": ALICE,
            "group-token": {"username": "bob", "groups": ["metrics-readers"]},
        }
    )
    server.grants.update({(PROMETHEUS["username"], "get", "/metrics"), ("group:metrics-readers", "get", "/metrics")})
    yield server
    server.close()


def start_epp(procs, *args: str) -> tuple[Proc, int]:
    started, tmp = procs
    g, h, m = free_port(), free_port(), free_port()
    argv = [
        bin_path("epp"),
        "--grpc-port",
        str(g),
        "--grpc-health-port",
        str(h),
        "--metrics-port",
        str(m),
        "--secure-serving=false",
        "-v=3",
        *args,
    ]
    p = Proc("epp", argv, tmp / f"epp-{g}.log").start()
    started.append(p)
    wait_port(m, proc=p.popen)
    return p, m


def kube_epp(procs, kubeapi: KubeApiServer, *args: str) -> tuple[Proc, int]:
    kubeapi.create(
        POOL_V1,
        {
            "metadata": {"name": "pool", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "sim"}}, "targetPorts": [{"number": 1}]},
        },
    )
    kubeapi.create(
        PODS,
        {
            "metadata": {"name": "p", "namespace": NS, "labels": {"app": "sim"}},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        },
    )
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
            assert (
                c.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer prom-token"}).status_code
                == 200
            )
            assert (
                c.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer not-a-token"}).status_code
                == 401
            )
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
    _proc, port = start_epp(
        procs, "--static-endpoints", "127.0.0.1:1", "--metrics-endpoint-auth", "--kube-api-server", kubeapi.url
    )
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
    r = subprocess.run(
        [
            bin_path("epp"),
            "--static-endpoints",
            "127.0.0.1:1",
            "--metrics-endpoint-auth=true",
            "--grpc-port",
            "0",
            "--grpc-health-port",
            "0",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("epp: error:")]
    assert lines and "--metrics-endpoint-auth needs a Kubernetes API to check tokens with" in lines[0]
    assert "Traceback" not in r.stderr


# ---- --enable-cert-reload: rotation without a restart, open streams untouched ----


def make_cert(common_name: str) -> tuple[bytes, bytes]:
    """(key PEM, cert PEM) valid for 127.0.0.1, so a client can verify it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def publish(cert_dir, key: bytes, cert: bytes) -> None:
    """Like a Kubernetes secret volume: files behind a `..data` symlink swapped atomically."""
    import os
    import uuid

    gen = cert_dir / f"..{uuid.uuid4().hex}"
    gen.mkdir()
    (gen / "tls.key").write_bytes(key)
    (gen / "tls.crt").write_bytes(cert)
    tmp_link = cert_dir / "..data_tmp"
    os.symlink(gen.name, tmp_link)
    os.replace(tmp_link, cert_dir / "..data")
    for f in ("tls.key", "tls.crt"):
        if not (cert_dir / f).is_symlink():
            os.symlink(f"..data/{f}", cert_dir / f)


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the ext_proc port is shown."""
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as conn:
        return conn.getpeercert(binary_form=True)


def served_certificate_becomes(port: int, want: bytes, within: float = 5.0) -> bytes:
    """The certificate new connections are shown, once it is `want` or `within` seconds have passed.
    The EPP checks the files four times a second and takes a rotation with a new server generation."""
    deadline = time.monotonic() + within
    while True:
        got = served_certificate(port)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def der(cert_pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)


def test_rotated_certificate_is_used_for_new_connections_and_open_streams_continue(procs, sim_fleet, tmp_path):
    import asyncio

    import grpc

    from tests.e2e.test_lifecycle import finish, open_routed_stream

    fleet = sim_fleet(1)
    key_a, cert_a = make_cert("epp-a")
    key_b, cert_b = make_cert("epp-b")
    certs = tmp_path / "certs"
    certs.mkdir()
    publish(certs, key_a, cert_a)
    started, tmp = procs
    g, h, m = free_port(), free_port(), free_port()
    proc = Proc(
        "epp",
        [
            bin_path("epp"),
            "--static-endpoints",
            fleet.hostports[0],
            "--grpc-port",
            str(g),
            "--grpc-health-port",
            str(h),
            "--metrics-port",
            str(m),
            "--cert-path",
            str(certs),
            "--enable-cert-reload",
            "-v=3",
        ],
        tmp / "epp-reload.log",
    ).start()
    started.append(proc)
    wait_port(g, proc=proc.popen)
    assert served_certificate(g) == der(cert_a)

    async def scenario():
        # The client trusts both certificates and verifies the server (SAN 127.0.0.1).
        creds = grpc.ssl_channel_credentials(root_certificates=cert_a + cert_b)
        async with grpc.aio.secure_channel(f"127.0.0.1:{g}", creds) as ch_a:
            stream, where = await open_routed_stream(g, ch_a)
            assert where == fleet.hostports[0]
            publish(certs, key_b, cert_b)
            assert await asyncio.to_thread(served_certificate_becomes, g, der(cert_b)) == der(cert_b)
            # A new connection with the new certificate routes too.
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{g}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch_b:
                other, other_where = await open_routed_stream(g, ch_b)
                assert other_where == fleet.hostports[0]
                await finish(other)
            # The stream opened under certificate A, on its old connection, carries on to the end.
            kinds = [r.WhichOneof("response") for r in await finish(stream)]
            assert kinds == ["response_headers", "response_body"]

    asyncio.run(scenario())
    # A broken rotation (a half-written certificate) is refused; B stays in service.
    (certs / "..data" / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\ntruncat")
    deadline = time.monotonic() + 5
    while "not reloaded, still serving" not in proc.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_certificate(g) == der(cert_b)
    assert proc.alive
    log = proc.log_path.read_text()
    assert "reloaded the certificate from" in log and "not reloaded, still serving" in log


def test_a_rotation_written_one_file_at_a_time_is_taken_once_both_match(tmp_path):
    from epp.extproc import tls

    key_a, cert_a = make_cert("a")
    key_b, cert_b = make_cert("b")
    (tmp_path / "tls.key").write_bytes(key_a)
    (tmp_path / "tls.crt").write_bytes(cert_a)
    # recheck=0: compare contents on every call, since same-size rewrites within one clock tick look unchanged
    reloader = tls.ReloadingCertificates(str(tmp_path), tls.from_dir(str(tmp_path)), recheck=0)
    assert reloader.fetch() is None  # unchanged
    (tmp_path / "tls.crt").write_bytes(cert_b)  # the key still belongs to A: not taken
    assert reloader.fetch() is None and reloader.current.cert_pem == cert_a
    assert reloader.fetch() is None  # and not re-checked on every handshake
    (tmp_path / "tls.key").write_bytes(key_b)
    assert reloader.fetch() is not None and reloader.current.cert_pem == cert_b and reloader.reloads == 1
    assert reloader.fetch() is None

"""HTTPS scraping of model servers: `--model-server-metrics-scheme https` and
`--model-server-metrics-https-insecure-skip-verify` (reference defaults: http, true).

A real TLS server on 127.0.0.1 serves a vLLM page with a certificate made in the test; the
EPP is the real one (flags parsed by the CLI, wired by the runner, scraping with its own
client). Verification off: the page is scraped. Verification on and the certificate not
trusted: every scrape fails with a certificate error, and the server still counts as
answering (a trust problem is ours, not a dead server). Trusted through SSL_CERT_FILE: scraped.
Plain http keeps working.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from epp.cli import parse_options
from epp.datalayer.fetch import TlsError, make_fetcher
from epp.datalayer.static_source import parse_static_endpoints
from epp.datalayer.vllmpage import VllmState, vllm_page
from epp.extproc import tls
from epp.runner import Epp
from epp.scheduling.config import load_config
from epp.stack.processes import free_port
from tests.support.inproc import serving
from tests.unit.datalayer.conftest import wait_until

PAGE = vllm_page(VllmState(waiting=5, running=3, kv_usage=0.25)).encode()


def _cert_for_localhost() -> tuple[bytes, bytes]:
    """(key PEM, cert PEM): a self-signed CA certificate valid for IP 127.0.0.1, so trusting
    it makes hostname verification pass too."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "epp-test model server")])
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class PageServer:
    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=PAGE, content_type="text/plain")

    async def start(self, ssl_context: ssl.SSLContext | None) -> PageServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _server_tls(tmp_path, key_pem: bytes, cert_pem: bytes) -> ssl.SSLContext:
    (tmp_path / "tls.key").write_bytes(key_pem)
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return ctx


@pytest.fixture
async def servers():
    made: list[PageServer] = []

    async def make(ssl_context: ssl.SSLContext | None) -> PageServer:
        s = await PageServer().start(ssl_context)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.stop()


def _epp(port: int, *flags: str) -> Epp:
    opts, warnings = parse_options(
        [
            "--static-endpoints",
            f"127.0.0.1:{port}",
            "--grpc-port",
            str(free_port()),
            "--grpc-health-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--secure-serving=false",
            *flags,
        ]
    )
    assert not [w for w in warnings if "metrics-scheme" in w or "skip-verify" in w]  # no longer ignored
    return Epp(opts, load_config(None), parse_static_endpoints(opts.static_endpoints))


async def test_https_with_skip_verify_scrapes_the_page(servers, tmp_path):
    server = await servers(_server_tls(tmp_path, *tls.self_signed()))  # untrusted, no SAN
    async with serving(
        _epp(server.port, "--model-server-metrics-scheme", "https", "--model-server-metrics-https-insecure-skip-verify")
    ) as (epp, _):
        ep = epp.datastore.endpoints()[0]
        await wait_until(lambda: ep.metrics.waiting_queue_size == 5, timeout=10)
        m = ep.metrics
        assert (m.running_requests_size, m.kv_cache_usage_percent) == (3, 0.25)
        assert epp.collector.stats()[ep.name].failed == 0
        assert epp.metrics.registry.get_sample_value("epp_scrape_interval_seconds") == pytest.approx(0.05)


async def test_https_skip_verify_is_the_reference_default(servers, tmp_path):
    server = await servers(_server_tls(tmp_path, *tls.self_signed()))
    async with serving(_epp(server.port, "--model-server-metrics-scheme=https")) as (epp, _):
        ep = epp.datastore.endpoints()[0]
        await wait_until(lambda: ep.metrics.waiting_queue_size == 5, timeout=10)


async def test_https_verified_against_an_untrusted_certificate_fails_clearly(servers, tmp_path, caplog):
    server = await servers(_server_tls(tmp_path, *tls.self_signed()))
    caplog.set_level(logging.WARNING, logger="epp.datalayer.scraper")
    async with serving(
        _epp(
            server.port,
            "--model-server-metrics-scheme",
            "https",
            "--model-server-metrics-https-insecure-skip-verify=false",
        )
    ) as (epp, _):
        ep = epp.datastore.endpoints()[0]
        await wait_until(lambda: epp.collector.stats()[ep.name].failed >= 3, timeout=10)
        stats = epp.collector.stats()[ep.name]
        assert stats.ok == 0 and ep.metrics.update_time == 0.0
        assert "certificate" in stats.last_error and "not trusted" in stats.last_error
        assert f"https://127.0.0.1:{server.port}/metrics" in stats.last_error
        assert ep.reach.scrape_failures == 0  # the server answered; only our trust is missing
    warned = [r for r in caplog.records if "not trusted" in r.getMessage()]
    assert len(warned) == 1  # once per endpoint, not once per scrape


async def test_https_verified_against_a_trusted_certificate_scrapes(servers, tmp_path, monkeypatch):
    key_pem, cert_pem = _cert_for_localhost()
    server = await servers(_server_tls(tmp_path, key_pem, cert_pem))
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # OpenSSL's trust store override
    async with serving(
        _epp(
            server.port,
            "--model-server-metrics-scheme",
            "https",
            "--model-server-metrics-https-insecure-skip-verify=false",
        )
    ) as (epp, _):
        ep = epp.datastore.endpoints()[0]
        await wait_until(lambda: ep.metrics.waiting_queue_size == 5, timeout=10)
        assert epp.collector.stats()[ep.name].failed == 0


async def test_plain_http_still_works(servers):
    server = await servers(None)
    async with serving(_epp(server.port)) as (epp, _):
        ep = epp.datastore.endpoints()[0]
        await wait_until(lambda: ep.metrics.waiting_queue_size == 5, timeout=10)
        assert epp.collector.scheme == "http"


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_both_backends_verify_or_skip(servers, tmp_path, backend):
    server = await servers(_server_tls(tmp_path, *tls.self_signed()))
    url = f"https://127.0.0.1:{server.port}/metrics"
    skipping = make_fetcher(backend, insecure_skip_verify=True)
    verifying = make_fetcher(backend, insecure_skip_verify=False)
    try:
        assert await skipping.get(url, timeout=5) == PAGE
        with pytest.raises(TlsError, match="not trusted"):
            await verifying.get(url, timeout=5)
    finally:
        await skipping.aclose()
        await verifying.aclose()


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_https_against_a_plain_http_server_is_a_tls_error(servers, backend):
    server = await servers(None)
    fetcher = make_fetcher(backend)
    try:
        with pytest.raises(TlsError, match="TLS handshake"):
            await fetcher.get(f"https://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        await fetcher.aclose()

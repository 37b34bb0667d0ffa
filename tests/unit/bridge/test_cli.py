"""epp-bridge flags: TLS modes, NGF's flag names, and that it answers on its port with metrics on another."""

from __future__ import annotations

import httpx

from epp.bridge.channels import TlsMode
from epp.bridge.cli import parser, tls_mode
from epp.stack.processes import Proc, bin_path, free_port, wait_port


def test_tls_modes_and_ngf_flag_names():
    assert tls_mode(parser().parse_args([])) is TlsMode.INSECURE
    assert tls_mode(parser().parse_args(["--plaintext"])) is TlsMode.PLAINTEXT
    assert tls_mode(parser().parse_args(["--endpoint-picker-disable-tls"])) is TlsMode.PLAINTEXT
    assert tls_mode(parser().parse_args(["--endpoint-picker-tls-skip-verify=true"])) is TlsMode.INSECURE
    assert tls_mode(parser().parse_args(["--ca-file", "ca.pem"])) is TlsMode.VERIFY
    args = parser().parse_args([])
    assert (args.host, args.port, args.metrics_port) == ("127.0.0.1", 54800, 54801)


def test_missing_epp_headers_is_ngf_400_and_counted(tmp_path):
    port, mport = free_port(), free_port()
    p = Proc(
        "epp-bridge",
        [bin_path("epp-bridge"), "--port", str(port), "--metrics-port", str(mport)],
        tmp_path / "bridge.log",
    ).start()
    try:
        wait_port(port, proc=p.popen)
        r = httpx.post(f"http://127.0.0.1:{port}/", content=b"{}", timeout=5)
        assert r.status_code == 400
        assert r.text == "missing at least one of required headers: X-EPP-Host and X-EPP-Port"
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"x-epp-host": "h", "x-epp-port": "0"}, timeout=5)
        assert r.status_code == 400 and r.headers["x-epp-bridge-error"] == "bad_request"
        metrics = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
        assert 'epp_bridge_errors_total{cause="missing_headers",mode="bridge"} 1.0' in metrics
        assert 'epp_bridge_requests_total{code="400",mode="bridge"} 2.0' in metrics
    finally:
        p.stop()

import re
import socket
import subprocess
import sys

import pytest

from epp.cli import parse_options
from epp.duration import parse_duration


def test_go_style_flags():
    o, _ = parse_options(
        [
            "-static-endpoints=127.0.0.1:8000",
            "--secure-serving=false",
            "--refresh-metrics-interval=50ms",
            "-v=4",
            "--metrics-staleness-threshold",
            "1m30s",
            "--endpoint-target-ports",
            "8000,8001,8000",
        ]
    )
    assert (o.secure_serving, o.refresh_metrics_interval, o.verbosity, o.metrics_staleness_threshold) == (
        False,
        0.05,
        4,
        90.0,
    )
    assert o.endpoint_target_ports == [8000, 8001]
    o, _ = parse_options(["--static-endpoints", "h:1", "--secure-serving", "--health-checking"])
    assert o.secure_serving and o.health_checking and o.grpc_port == 9002 and o.metrics_port == 9090


def test_deprecated_flags_accepted_with_warning():
    _o, warnings = parse_options(
        [
            "--static-endpoints",
            "h:1",
            "--kv-cache-usage-percentage-metric",
            "vllm:gpu_cache_usage_perc",
            "--zap-log-level=debug",
        ]
    )
    assert any("kv-cache-usage-percentage-metric" in w for w in warnings)


@pytest.mark.parametrize(
    "text,seconds", [("50ms", 0.05), ("2s", 2.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), ("100us", 1e-4)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--static-endpoints", "h:1", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--static-endpoints", "h:1", "--refresh-metrics-interval=50"], "invalid duration '50'"),
        (["--static-endpoints", "h:1", "--secure-serving=maybe"], "invalid boolean 'maybe'"),
        (["--static-endpoints", "h:1", "--config-file", "a", "--config-text", "b"], "mutually exclusive"),
        ([], "one of --pool-name, --endpoint-selector or --static-endpoints is required"),
        (["--static-endpoints", "h:1", "--grpc-port", "70000"], "out of range"),
        (["--static-endpoints", "h:1", "--ha-enable-leader-election"], "needs Kubernetes mode"),
    ],
)
def test_bad_flags_stop_startup_naming_the_problem(args, message):
    r = subprocess.run([sys.executable, "-m", "epp.cli", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and message in r.stderr


def test_bad_config_file_stops_startup(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer, parameters: {treshold: 3}}]\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "epp.cli", "--static-endpoints", "127.0.0.1:1", "--config-file", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "treshold" in r.stderr and str(cfg) in r.stderr


def test_bad_static_endpoint_stops_startup():
    r = subprocess.run(
        [sys.executable, "-m", "epp.cli", "--static-endpoints", "127.0.0.1:notaport"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "notaport" in r.stderr


# ---- start-up errors: one line, `epp: error: ...`, exit 2 for configuration, 1 for a port that cannot be had ----


def run_epp(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "epp.cli", *args], capture_output=True, text=True, timeout=timeout)


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) ")


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *parts: str) -> None:
    """The error is the last line, one line; anything before it is an ordinary log record (start-up warnings)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == code, r.stderr
    assert lines and lines[-1].startswith("epp: error: "), r.stderr
    assert all(LOG_RECORD.match(line) for line in lines[:-1]), r.stderr
    assert "Traceback" not in r.stderr
    for part in parts:
        assert part in lines[-1], lines[-1]


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


FREE = ["--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"]


@pytest.mark.parametrize("flag", ["--metrics-port", "--grpc-port", "--grpc-health-port", "--http-picker-port"])
def test_a_busy_port_names_its_flag_and_exits_1(busy_port, flag):
    args = dict(zip(FREE[::2], FREE[1::2], strict=True))
    args[flag] = str(busy_port)
    r = run_epp("--static-endpoints", "127.0.0.1:1", "--secure-serving=false", *[x for kv in args.items() for x in kv])
    assert_one_line_error(r, 1, f"cannot listen on 127.0.0.1:{busy_port} ({flag}): address already in use")


def test_an_address_not_on_this_host_is_a_bind_failure():
    r = run_epp("--static-endpoints", "127.0.0.1:1", "--bind-address", "10.255.255.254", *FREE)
    assert_one_line_error(r, 1, "cannot listen on 10.255.255.254:0 (--grpc-port): cannot assign requested address")


@pytest.mark.parametrize(
    "a,b",
    [
        ("--grpc-port", "--metrics-port"),
        ("--grpc-port", "--grpc-health-port"),
        ("--grpc-health-port", "--metrics-port"),
        ("--metrics-port", "--http-picker-port"),
    ],
)
def test_two_servers_on_one_port_is_a_flag_error(a, b):
    r = run_epp("--static-endpoints", "127.0.0.1:1", a, "19876", b, "19876")
    assert_one_line_error(r, 2, f"{a} and {b} are both 19876: each server needs its own port")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--bind-address", "999.1.1.1"], "argument --bind-address: invalid address '999.1.1.1'"),
        (["--bind-address", "not-an-ip"], "invalid address 'not-an-ip'"),
        (["--max-request-body-bytes=-1"], "argument --max-request-body-bytes: -1 must be greater than zero"),
        (["--max-request-body-bytes=0"], "0 must be greater than zero"),
        (["--max-request-body-bytes=lots"], "invalid number 'lots'"),
        (["--config-text="], "--config-text is empty"),
        (["--config-text", "# nothing here\n"], "--config-text holds no configuration"),
    ],
)
def test_bad_values_are_one_line_flag_errors(args, message):
    assert_one_line_error(run_epp("--static-endpoints", "127.0.0.1:1", *args, *FREE), 2, message)


def test_an_ipv6_bind_address_is_accepted():
    o, _ = parse_options(["--static-endpoints", "h:1", "--bind-address", "::1"])
    assert o.bind_address == "::1"
    o, _ = parse_options(["--static-endpoints", "h:1", "--bind-address", "localhost"])
    assert o.bind_address == "127.0.0.1"


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "the file holds no configuration (it is empty or only comments)"),
        (b"\n  \n# just a comment\n", "the file holds no configuration"),
        (b"\xff\xfekind: EndpointPickerConfig\n", "not UTF-8 text (byte 0xff at line 1, column 1)"),
        (b"kind: EndpointPickerConfig\nplugins: [caf\xe9]\n", "not UTF-8 text (byte 0xe9 at line 2, column 14)"),
    ],
)
def test_config_files_that_are_empty_or_not_text_are_errors_naming_the_file(tmp_path, content, message):
    cfg = tmp_path / "epp-config.yaml"
    cfg.write_bytes(content)
    r = run_epp("--static-endpoints", "127.0.0.1:1", "--config-file", str(cfg), *FREE)
    assert_one_line_error(r, 2, f"--config-file {cfg}: {message}")


def _write_pair(d, key_pem: bytes, cert_pem: bytes) -> None:
    d.mkdir(exist_ok=True)
    (d / "tls.key").write_bytes(key_pem)
    (d / "tls.crt").write_bytes(cert_pem)


def test_certificate_errors_say_what_is_wrong_with_which_file(tmp_path):
    from epp.extproc import tls

    a, b = tls.self_signed(), tls.self_signed()
    cases = {
        "garbage-crt": (a.key_pem, b"not a certificate\n", "tls.crt is not a valid PEM certificate"),
        "garbage-key": (
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            a.cert_pem,
            "tls.key is not a valid PEM private key",
        ),
        "mismatch": (b.key_pem, a.cert_pem, "tls.key is not the private key of the certificate in"),
    }
    for name, (key, cert, message) in cases.items():
        d = tmp_path / name
        _write_pair(d, key, cert)
        r = run_epp("--static-endpoints", "127.0.0.1:1", "--cert-path", str(d), *FREE)
        assert_one_line_error(r, 2, f"--cert-path {d}: {d}/{message}")
    r = run_epp("--static-endpoints", "127.0.0.1:1", "--cert-path", str(tmp_path / "none"), *FREE)
    assert_one_line_error(r, 2, "missing")


def test_ha_mode_flag():
    from epp.cli import parse_options

    assert parse_options(["--static-endpoints", "h:1", "--ha-mode", "active-active"])[0].ha_mode == "active-active"
    assert parse_options(["--static-endpoints", "h:1"])[0].ha_mode == "single"
    opts = parse_options(["--pool-name", "p", "--ha-mode", "leader-election"])[0]
    assert opts.ha_enable_leader_election and opts.ha_mode == "leader-election"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "epp.cli",
            "--pool-name",
            "p",
            "--ha-mode",
            "active-active",
            "--ha-enable-leader-election",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "drop --ha-enable-leader-election" in r.stderr

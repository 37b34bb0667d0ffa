import subprocess
import sys

import pytest

from epp.cli import parse_options
from epp.duration import parse_duration


def test_go_style_flags():
    o, _ = parse_options(["-static-endpoints=127.0.0.1:8000", "--secure-serving=false",
                          "--refresh-metrics-interval=50ms", "-v=4", "--metrics-staleness-threshold", "1m30s",
                          "--endpoint-target-ports", "8000,8001,8000"])
    assert (o.secure_serving, o.refresh_metrics_interval, o.verbosity, o.metrics_staleness_threshold) == (
        False, 0.05, 4, 90.0)
    assert o.endpoint_target_ports == [8000, 8001]
    o, _ = parse_options(["--static-endpoints", "h:1", "--secure-serving", "--health-checking"])
    assert o.secure_serving and o.health_checking and o.grpc_port == 9002 and o.metrics_port == 9090


def test_deprecated_flags_accepted_with_warning():
    o, warnings = parse_options(["--static-endpoints", "h:1", "--kv-cache-usage-percentage-metric",
                                 "vllm:gpu_cache_usage_perc", "--zap-log-level=debug"])
    assert any("kv-cache-usage-percentage-metric" in w for w in warnings)


@pytest.mark.parametrize("text,seconds", [("50ms", 0.05), ("2s", 2.0), ("1m30s", 90.0), ("1.5h", 5400.0),
                                          ("0", 0.0), ("100us", 1e-4)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("args,message", [
    (["--static-endpoints", "h:1", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--static-endpoints", "h:1", "--refresh-metrics-interval=50"], "invalid duration '50'"),
    (["--static-endpoints", "h:1", "--secure-serving=maybe"], "invalid boolean 'maybe'"),
    (["--static-endpoints", "h:1", "--config-file", "a", "--config-text", "b"], "mutually exclusive"),
    ([], "one of --pool-name, --endpoint-selector or --static-endpoints is required"),
    (["--static-endpoints", "h:1", "--grpc-port", "70000"], "out of range"),
    (["--static-endpoints", "h:1", "--ha-enable-leader-election"], "needs Kubernetes mode"),
])
def test_bad_flags_stop_startup_naming_the_problem(args, message):
    r = subprocess.run([sys.executable, "-m", "epp.cli", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and message in r.stderr


def test_bad_config_file_stops_startup(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
                   "plugins: [{type: queue-scorer, parameters: {treshold: 3}}]\n")
    r = subprocess.run([sys.executable, "-m", "epp.cli", "--static-endpoints", "127.0.0.1:1", "--config-file",
                        str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "treshold" in r.stderr and str(cfg) in r.stderr


def test_bad_static_endpoint_stops_startup():
    r = subprocess.run([sys.executable, "-m", "epp.cli", "--static-endpoints", "127.0.0.1:notaport"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "notaport" in r.stderr

"""`epp --version` and `epp --validate-only`: the real command, nothing started."""

from __future__ import annotations

import subprocess
import sys

from epp import __version__


def epp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "epp.cli", *args], capture_output=True, text=True, timeout=60)


def test_version_prints_the_package_version():
    r = epp("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"epp {__version__} ")


def test_validate_only_describes_the_resolved_config_without_endpoint_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "featureGates: [flowControl]\nplugins:\n- type: queue-scorer\n- type: kv-cache-utilization-scorer\n"
        "- {type: max-score-picker, name: pick}\nschedulingProfiles:\n- name: default\n  plugins:\n"
        "  - {pluginRef: queue-scorer, weight: 2}\n  - {pluginRef: kv-cache-utilization-scorer}\n"
        "  - {pluginRef: pick}\n"
        "flowControl:\n  maxRequests: 50\n  priorityBands:\n  - {priority: 100, maxRequests: 10}\n"
    )
    r = epp("--config-file", str(cfg), "--validate-only")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"config: {cfg}" in out
    assert "scorer queue-scorer weight 2\n  scorer kv-cache-utilization-scorer weight 1\n  picker pick" in out
    assert "pick (max-score-picker): maxNumOfEndpoints=1" in out
    assert "flow control: on (GIE schema); maxRequests 50" in out
    assert "band priority 100: maxRequests 10" in out


def test_validate_only_reports_a_bad_config_with_exit_code_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: queue-scorer\n  parameters: {bogus: 1}\n"
    )
    r = epp("--config-file", str(cfg), "--validate-only")
    assert r.returncode == 2 and r.stdout == ""
    assert "bogus: Extra inputs are not permitted" in r.stderr
    r = epp("--validate-only", "--config-name", "no-such-config")
    assert r.returncode == 2 and "--config-name" in r.stderr


def test_validate_only_checks_static_endpoints_too():
    r = epp("--validate-only", "--static-endpoints", "127.0.0.1:notaport")
    assert r.returncode == 2 and "--static-endpoints" in r.stderr

"""deploy/observability/: the rules are valid for promtool, every alert has a firing case in
rules-test.yaml and that unit test passes, and the dashboard is well-formed. (What they query is
checked against a live EPP by tests/e2e/test_prometheus.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "deploy" / "observability"
CHART_FILES = ROOT / "deploy" / "helm" / "epp" / "files"


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: `make install` installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=OBS, capture_output=True, text=True, timeout=120)


def test_rules_are_valid():
    r = promtool("check", "rules", "rules.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_fires_in_the_rule_unit_tests_and_they_pass():
    alerts = {
        rule["alert"]
        for g in yaml.safe_load((OBS / "rules.yaml").read_text())["groups"]
        for rule in g["rules"]
        if "alert" in rule
    }
    cases = yaml.safe_load((OBS / "rules-test.yaml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts and alerts == fired, alerts ^ fired
    r = promtool("test", "rules", "rules-test.yaml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_dashboard_is_well_formed():
    dash = json.loads((OBS / "dashboard.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    assert all(p["targets"] and all(t["expr"].strip() for t in p["targets"]) for p in panels)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "job", "pool", "model"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)


def test_the_chart_ships_these_files_not_copies():
    for name in ("rules.yaml", "dashboard.json"):
        link = CHART_FILES / name
        assert link.is_symlink() and link.resolve() == (OBS / name).resolve()

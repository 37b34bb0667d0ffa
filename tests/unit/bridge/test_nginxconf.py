"""deploy/nginx/nginx.conf rendering: only the marked lines change."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from epp.bridge import nginxconf
from epp.bridge.nginxconf import DEPLOY_DIR, NginxSettings


def test_marked_lines_rewritten_and_nothing_else():
    s = NginxSettings(
        listen_port=18081,
        picker_url="http://127.0.0.1:19004/",
        epp_host="10.1.2.3",
        epp_port=19002,
        pool=["127.0.0.1:18000", "127.0.0.1:18001"],
        failure_mode="open",
        workers=2,
    )
    text = nginxconf.render(s)
    assert "listen 127.0.0.1:18081;" in text
    assert "set $epp_picker_url http://127.0.0.1:19004/;" in text
    assert "set $epp_host 10.1.2.3;" in text and "set $epp_port 19002;" in text
    assert "server 127.0.0.1:18000;\n    server 127.0.0.1:18001;" in text
    assert "set $epp_failure_mode open;" in text
    assert f"js_path {DEPLOY_DIR};" in text
    assert "worker_processes 2;" in text
    assert "# render:" not in text and "127.0.0.1:8081;" not in text and "54800" not in text
    source = (DEPLOY_DIR / "nginx.conf").read_text().splitlines()
    rendered = [ln for ln in text.splitlines() if not ln.startswith("user ")]  # added when run as root
    assert len(rendered) == len(source) + 1  # one more pool server
    unmarked = iter(rendered)
    assert all(ln in unmarked for ln in source if "# render:" not in ln)  # same lines, same order


def test_failure_mode_must_be_open_or_close():
    with pytest.raises(ValueError):
        nginxconf.render(NginxSettings(failure_mode="maybe"))


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_rendered_config_is_valid_for_the_installed_nginx(tmp_path):
    nginxconf.write(NginxSettings(), tmp_path)
    out = subprocess.run([*nginxconf.command(tmp_path), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr

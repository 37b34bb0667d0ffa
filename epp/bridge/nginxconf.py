"""Render deploy/nginx/nginx.conf for given ports (tests, `make run GATEWAY=nginx`, the benchmark).

The deploy file is what users run; this only rewrites the lines marked `# render:<key>`, so tests
exercise that exact file and the NJS module next to it.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
_MARK = re.compile(r"^(\s*)(.*?;)\s*# render:(\w+)\s*$")


@dataclass
class NginxSettings:
    listen_port: int = 8081
    picker_url: str = "http://127.0.0.1:54800/"
    epp_host: str = "127.0.0.1"
    epp_port: int = 9002
    pool: list[str] = field(default_factory=lambda: ["127.0.0.1:8000"])
    failure_mode: str = "close"  # or "open"
    workers: int = 1
    access_log: bool = True

    def lines(self, indent: str, key: str) -> list[str]:
        if key == "pool":
            return [f"{indent}server {hp};" for hp in self.pool]
        return [
            indent
            + {
                "listen": f"listen 127.0.0.1:{self.listen_port};",
                "picker_url": f"set $epp_picker_url {self.picker_url};",
                "epp_host": f"set $epp_host {self.epp_host};",
                "epp_port": f"set $epp_port {self.epp_port};",
                "failure_mode": f"set $epp_failure_mode {self.failure_mode};",
                "workers": f"worker_processes {self.workers};",
                "access_log": "access_log access.log epp;" if self.access_log else "access_log off;",
                "js_path": f"js_path {DEPLOY_DIR};",
            }[key]
        ]


def render(settings: NginxSettings) -> str:
    if settings.failure_mode not in ("open", "close"):
        raise ValueError(f"failure_mode must be open or close, not {settings.failure_mode!r}")
    out: list[str] = []
    for line in (DEPLOY_DIR / "nginx.conf").read_text().splitlines():
        m = _MARK.match(line)
        out.extend(settings.lines(m.group(1), m.group(3)) if m else [line])
    if os.geteuid() == 0:
        # As root, workers would switch to an unprivileged user that cannot read the prefix directory.
        out.insert(0, f"user {getpass.getuser()};")
    return "\n".join(out) + "\n"


def write(settings: NginxSettings, prefix: Path) -> Path:
    """Writes <prefix>/nginx.conf; logs, pid and temp files go under <prefix> too."""
    prefix.mkdir(parents=True, exist_ok=True)
    path = prefix / "nginx.conf"
    path.write_text(render(settings))
    return path


def command(prefix: Path, nginx: str = "nginx") -> list[str]:
    # -e: the start-up error log, before the config's own error_log applies.
    return [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]

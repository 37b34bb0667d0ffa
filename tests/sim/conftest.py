from __future__ import annotations

import socket

import pytest

from epp.sim.engine import EngineConfig
from epp.sim.fleet import Fleet
from epp.sim.server import ReplicaConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica(i: int = 0, **kw) -> ReplicaConfig:
    engine = kw.pop("engine", EngineConfig(num_gpu_blocks=2048, max_model_len=8192))
    return ReplicaConfig(
        index=i, port=0, pod_name=f"sim-{i}", engine=engine, time_scale=kw.pop("time_scale", 0.05), **kw
    )


@pytest.fixture
async def start_fleet():
    fleets: list[Fleet] = []

    async def _start(*configs: ReplicaConfig) -> Fleet:
        f = Fleet(list(configs))
        await f.start(announce=None)
        fleets.append(f)
        return f

    yield _start
    for f in fleets:
        await f.stop()


@pytest.fixture
def make_replica():
    return replica


@pytest.fixture
def get_free_port():
    return free_port

"""KV events on a ZMQ SUB socket, the fleet CLI, and virtual vs real time agreement."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio

from epp.sim.cli import build_parser, configs_from_args
from epp.sim.engine import Engine, EngineConfig
from epp.sim.kvcache import block_hashes
from epp.sim.kvevents import decode_batch
from epp.sim.tokenizer import natural_output_len, request_key
from epp.sim.vtime import TraceItem, VirtualFleet

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def _recv(sub, timeout=3.0):
    return await asyncio.wait_for(sub.recv_multipart(), timeout)


@pytest.mark.parametrize("fmt", ["array", "map"])
async def test_kv_events_arrive_on_sub_socket_and_describe_stored_blocks(start_fleet, make_replica, get_free_port, fmt):
    base = get_free_port()
    endpoint = f"tcp://127.0.0.1:{base}"
    cfg = EngineConfig(num_gpu_blocks=8, block_size=16, max_model_len=128, hash_seed=3)
    fleet = await start_fleet(make_replica(0, engine=cfg, kv_events_endpoint=endpoint, kv_events_format=fmt, seed=3))
    port = fleet.urls[0].rsplit(":", 1)[1]
    ctx = zmq.asyncio.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    sub.connect(endpoint)
    try:
        await asyncio.sleep(0.2)  # PUB/SUB slow-joiner: let the subscription propagate
        prompt = [(i * 31) % 5000 + 1 for i in range(70)]  # 4 full blocks + 6 tokens
        async with aiohttp.ClientSession() as s:
            r = await s.post(
                fleet.urls[0] + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1}
            )
            assert r.status == 200
        topic, seq, payload = await _recv(sub)
        assert topic == f"kv@127.0.0.1:{port}@{MODEL}".encode()
        assert int.from_bytes(seq, "big") == 0
        raw = msgpack.unpackb(payload)
        assert isinstance(raw, list if fmt == "array" else dict)
        ts, events = decode_batch(payload)
        assert ts > 1.7e9
        stored = [e for e in events if e["type"] == "BlockStored"]
        assert len(stored) == 1
        ev = stored[0]
        assert ev["token_ids"] == prompt[:64] and ev["block_size"] == 16 and ev["parent_block_hash"] is None
        assert ev["block_hashes"] == block_hashes(prompt, 16, 3, None) and len(ev["block_hashes"]) == 4
        assert ev["medium"] == "GPU"

        # A second, different prompt that needs the whole cache evicts those blocks.
        other = [7] * 120
        async with aiohttp.ClientSession() as s:
            r = await s.post(fleet.urls[0] + "/v1/completions", json={"model": MODEL, "prompt": other, "max_tokens": 1})
            assert r.status == 200
        removed: list[int] = []
        while len(removed) < 4:
            _, seq, payload = await _recv(sub)
            for e in decode_batch(payload)[1]:
                if e["type"] == "BlockRemoved":
                    removed.extend(e["block_hashes"])
        assert sorted(removed) == sorted(ev["block_hashes"])
        assert int.from_bytes(seq, "big") >= 1
    finally:
        sub.close(linger=0)


def test_cli_builds_heterogeneous_fleet_configs():
    args = build_parser().parse_args(
        [
            "--replicas",
            "3",
            "--port",
            "9000",
            "--lora-modules",
            "a,b",
            "--lora-modules-per-replica",
            "1:c;2:",
            "--slow-replica",
            "2:3.5",
            "--prefill-ms-per-token",
            "0.2",
            "--lora-load-time",
            "80",
            "--engine",
            "sglang",
            "--num-gpu-blocks",
            "100",
            "--kv-events-endpoint",
            "tcp://127.0.0.1:5557",
        ]
    )
    cfgs = configs_from_args(args)
    assert [c.port for c in cfgs] == [9000, 9001, 9002]
    assert [c.pod_name for c in cfgs] == ["sim-0", "sim-1", "sim-2"]
    assert [c.lora_modules for c in cfgs] == [("a", "b"), ("c",), ()]
    assert [c.cost.slowdown for c in cfgs] == [1.0, 1.0, 3.5]
    assert cfgs[0].cost.prefill_ms_per_token == 0.2 and cfgs[0].cost.lora_load_ms == 80
    assert cfgs[0].engine.max_model_len == 1600  # clamped to KV capacity
    assert dict(cfgs[0].lora_ids) == {"a": 1, "b": 2, "c": 3}
    assert all(c.engine_kind == "sglang" for c in cfgs)


async def test_cli_process_announces_every_replica_then_ready():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "epp.sim.cli",
        "--replicas",
        "3",
        "--port",
        "0",
        "--time-scale",
        "0.01",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        lines = []
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            assert line, "sim exited before ready"
            if line.startswith("epp-sim ready"):
                break
            lines.append(line)
        assert line == "epp-sim ready: 3 replicas"
        assert [ln.rsplit(" as ", 1)[1] for ln in lines] == ["sim-0", "sim-1", "sim-2"]
        urls = [ln.split()[2] for ln in lines]
        async with aiohttp.ClientSession() as s:
            for i, u in enumerate(urls):
                async with s.get(u + "/health") as r:
                    assert r.status == 200 and r.headers["x-inference-pod"] == f"sim-{i}"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0


async def test_virtual_and_real_time_agree_on_tokens_and_cache_hits(start_fleet, make_replica):
    """Same trace through the HTTP server in (scaled) real time and through the
    discrete-event driver: per-request token counts and cached tokens must agree."""
    cfg = EngineConfig(max_num_seqs=8, num_gpu_blocks=512, max_model_len=4096, hash_seed=0)
    seed, mean = 0, 24
    prefixes = [[(k * 1000 + i) % 90_000 + 1 for i in range(160)] for k in range(3)]
    trace = []
    for i in range(12):
        ids = prefixes[i % 3] + [50_000 + i] * (5 + i)
        key = request_key(seed, ids)
        ignore_eos = i % 2 == 0
        max_tokens = 30
        natural = natural_output_len(key, mean)
        out = max_tokens if ignore_eos else min(natural, max_tokens)
        trace.append(
            (TraceItem(0.25 * i, ids, max_tokens, output_len=out, request_id=f"r{i}", output_key=key), ignore_eos)
        )

    virtual = VirtualFleet([Engine(cfg)]).run_trace([t for t, _ in trace])
    vres = {r.request_id: (r.completion_tokens, r.cached_tokens) for r in virtual}

    scale = 0.1
    fleet = await start_fleet(make_replica(0, engine=cfg, time_scale=scale, seed=seed, natural_output_len=mean))
    url = fleet.urls[0]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with aiohttp.ClientSession() as s:

        async def send(item, ignore_eos):
            await asyncio.sleep(max(0.0, t0 + item.arrival * scale - loop.time()))
            body = {
                "model": MODEL,
                "prompt": item.prompt_token_ids,
                "max_tokens": item.max_tokens,
                "ignore_eos": ignore_eos,
            }
            async with s.post(url + "/v1/completions", json=body) as r:
                u = (await r.json())["usage"]
            return item.request_id, (u["completion_tokens"], u["prompt_tokens_details"]["cached_tokens"])

        rres = dict(await asyncio.gather(*(send(t, e) for t, e in trace)))
    assert rres == vres
    assert sum(1 for _, c in vres.values() if c > 0) >= 9  # the trace does exercise the cache
    assert len({n for n, _ in vres.values()}) > 1  # and both stop reasons

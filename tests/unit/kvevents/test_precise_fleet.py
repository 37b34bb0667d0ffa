"""The precise index of a running EPP against the simulator's real KV caches: what the EPP
believes each server holds equals what it holds, also after a server restarts (sequence
numbers start over) and after a subscriber misses events at the publisher's high-water mark.
Real sockets throughout: epp-sim's HTTP servers and ZMQ publishers, the EPP's ingester."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import orjson
import pytest

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.kvevents.keys import request_keys
from epp.sim.engine import EngineConfig
from epp.sim.fleet import Fleet
from epp.sim.kvcache import block_hashes
from epp.sim.server import ReplicaConfig, SimServer
from epp.stack.processes import free_port
from tests.support.extproc_client import Conversation, request_body, request_headers, response_headers, set_headers
from tests.support.inproc import running_epp

MODEL = "m"
BS = 16


def config(kv_offset: int, replay_offset: int | None = None) -> str:
    replay = f"\n        replaySocketPortOffset: {replay_offset}" if replay_offset else ""
    return f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: token-producer
- type: precise-prefix-cache-producer
  parameters:
    tokenProcessorConfig: {{blockSizeTokens: {BS}}}
    kvEventsConfig:
      podDiscoveryConfig:
        socketPortOffset: {kv_offset}{replay}
- type: estimated-ttft-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: estimated-ttft-scorer
  - pluginRef: max-score-picker
"""


def central_config(port: int) -> str:
    """llm-d's central socket: the EPP binds it, the servers' publishers connect to it."""
    return config(0).replace(
        "      podDiscoveryConfig:\n        socketPortOffset: 0",
        f"      zmqEndpoint: tcp://127.0.0.1:{port}\n      discoverPods: false",
    )


class Pool:
    """Two sim replicas; replica i serves HTTP on http_base+i, publishes on kv_base+i (or, with
    `central`, connects its publisher to that one port, where the EPP listens)."""

    def __init__(self, replay: bool, central: int | None = None) -> None:
        self.http = [free_port(), free_port()]
        self.replay = replay
        self.central = central
        self.servers: list[SimServer] = []
        self.engine = EngineConfig(num_gpu_blocks=40, block_size=BS, max_model_len=512, hash_seed=7)

    def cfg(self, i: int) -> ReplicaConfig:
        # Every replica gets the same offset between HTTP and KV ports, as the EPP is told.
        kv = self.central or self.http[i] + self.kv_offset
        return ReplicaConfig(
            index=0,
            port=self.http[i],
            pod_name=f"sim-{i}",
            model=MODEL,
            engine=self.engine,
            time_scale=0.01,
            seed=7,
            kv_events_endpoint=f"tcp://127.0.0.1:{kv}",
            kv_events_connect=self.central is not None,
            kv_events_replay_endpoint=(f"tcp://127.0.0.1:{self.http[i] + self.replay_offset}" if self.replay else None),
        )

    @property
    def kv_offset(self) -> int:
        return 1000

    @property
    def replay_offset(self) -> int:
        return 2000

    async def start(self) -> None:
        self.fleet = Fleet([self.cfg(0), self.cfg(1)])
        await self.fleet.start(announce=None)
        self.servers = list(self.fleet.servers)

    async def restart(self, i: int) -> None:
        await self.servers[i].stop()
        await asyncio.sleep(0.1)
        s = SimServer(self.cfg(i), self.fleet.servers[0].tokenizer, self.fleet.servers[0].vocab)
        await s.start()
        self.servers[i] = s

    async def stop(self) -> None:
        for s in self.servers:
            await s.stop()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(name=f"sim-{i}", address="127.0.0.1", port=p) for i, p in enumerate(self.http)]

    def truth(self, i: int, tokens: list[int]) -> int:
        kv = self.servers[i].engine.kv
        return len(kv.lookup(block_hashes(tokens, BS, 7, None), 10**6))


def prompt(seed: int, n: int = 96) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(1, 50000) for _ in range(n)]


async def complete(session: aiohttp.ClientSession, port: int, tokens: list[int]) -> None:
    async with session.post(
        f"http://127.0.0.1:{port}/v1/completions", json={"model": MODEL, "prompt": tokens, "max_tokens": 2}
    ) as r:
        assert r.status == 200, await r.text()


def believed(epp, name: str, tokens: list[int]) -> float:
    producer = epp.config.plugins["precise-prefix-cache-producer"]
    return producer.index.match(request_keys(MODEL, tokens, BS)).get(name, 0.0)


async def agree(pool: Pool, epp, prompts: list[list[int]], timeout: float = 5.0) -> float:
    """Seconds until the EPP's belief equals every server's cache for every prompt."""
    start = time.monotonic()
    while True:
        wrong = [
            (i, j, believed(epp, f"sim-{i}", p), pool.truth(i, p))
            for i in range(2)
            for j, p in enumerate(prompts)
            if believed(epp, f"sim-{i}", p) != pool.truth(i, p)
        ]
        if not wrong:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"(server, prompt, believed, held) still differ: {wrong}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def pool(request):
    p = Pool(replay=getattr(request, "param", True))
    await p.start()
    yield p
    await p.stop()


async def pick(channel, tokens: list[int]) -> str:
    conv = Conversation(channel)
    await conv.send(request_headers())
    await conv.send(request_body(orjson.dumps({"model": MODEL, "prompt": tokens, "max_tokens": 2})))
    dest = set_headers((await conv.recv()).request_headers.response)["x-gateway-destination-endpoint"]
    await conv.recv()
    await conv.send(response_headers({":status": "200"}, eos=True))
    await conv.close()
    return dest


async def test_picks_follow_what_the_servers_really_hold(pool):
    async with running_epp(pool.endpoints(), config(pool.kv_offset)) as (epp, ch):
        await asyncio.sleep(0.5)  # subscriptions reach the publishers
        p = prompt(1)
        async with aiohttp.ClientSession() as s:
            await complete(s, pool.http[1], p)  # sent around the EPP: only the events tell it
        await agree(pool, epp, [p])
        assert believed(epp, "sim-1", p) == 6  # 96 tokens = 6 blocks
        assert await pick(ch, p + prompt(2, 16)) == f"127.0.0.1:{pool.http[1]}"


async def test_servers_that_connect_to_the_epps_central_socket_are_told_apart_by_topic():
    pool = Pool(replay=False, central=free_port())
    await pool.start()
    try:
        async with running_epp(pool.endpoints(), central_config(pool.central)) as (epp, ch):
            await asyncio.sleep(0.5)  # the publishers' connections retry until the EPP has bound
            ps = [prompt(1), prompt(2)]
            async with aiohttp.ClientSession() as s:
                await complete(s, pool.http[1], ps[0])
                await complete(s, pool.http[0], ps[1])
                await agree(pool, epp, ps)
                assert believed(epp, "sim-1", ps[0]) == 6 and believed(epp, "sim-0", ps[0]) == 0
                assert await pick(ch, ps[0] + prompt(3, 16)) == f"127.0.0.1:{pool.http[1]}"
                # A restart through the shared socket: that endpoint's numbers start over.
                await pool.restart(1)
                await asyncio.sleep(0.5)
                await complete(s, pool.http[1], ps[1])
                await agree(pool, epp, ps)
            producer = epp.config.plugins["precise-prefix-cache-producer"]
            assert believed(epp, "sim-1", ps[0]) == 0 and believed(epp, "sim-1", ps[1]) == 6
            assert producer.ingester.counters.batches["reset"] >= 1
            assert producer.ingester.counters.unknown_topics == 0
    finally:
        await pool.stop()


def test_discover_pods_off_without_a_central_socket_is_a_config_error():
    from epp.scheduling.config import ConfigError, load_config

    text = config(0).replace("      podDiscoveryConfig:\n        socketPortOffset: 0", "      discoverPods: false")
    with pytest.raises(ConfigError, match="discoverPods is false and no zmqEndpoint"):
        load_config(text, "test")
    with pytest.raises(ConfigError, match="zmqEndpoint"):
        load_config(central_config(1).replace("tcp://127.0.0.1:1", "127.0.0.1:1"), "test")


async def test_restarted_server_is_forgotten_and_relearned(pool):
    text = config(pool.kv_offset, pool.replay_offset)
    async with running_epp(pool.endpoints(), text) as (epp, _ch):
        await asyncio.sleep(0.5)
        ps = [prompt(i) for i in range(3)]
        async with aiohttp.ClientSession() as s:
            for p in ps:
                await complete(s, pool.http[0], p)
            await agree(pool, epp, ps)
            assert believed(epp, "sim-0", ps[2]) == 6
            await pool.restart(0)  # empty cache, sequence numbers from 0
            await asyncio.sleep(0.5)  # the SUB socket reconnects by itself
            await complete(s, pool.http[0], ps[1])
            took = await agree(pool, epp, ps)
        assert believed(epp, "sim-0", ps[0]) == 0 and believed(epp, "sim-0", ps[1]) == 6
        producer = epp.config.plugins["precise-prefix-cache-producer"]
        assert producer.ingester.counters.batches["reset"] >= 1
        assert took < 5


@pytest.mark.parametrize("pool", [True], indirect=True)
async def test_missed_events_are_replayed(pool):
    text = config(pool.kv_offset, pool.replay_offset)
    async with running_epp(pool.endpoints(), text) as (epp, _ch):
        await asyncio.sleep(0.5)
        ps = [prompt(i) for i in range(12)]  # 72 blocks through a 40-block cache: evictions
        async with aiohttp.ClientSession() as s:
            await complete(s, pool.http[0], ps[0])
            await agree(pool, epp, ps[:1])
            pool.servers[0].publisher.drop_next = 5  # lost at the high-water mark, kept for replay
            for p in ps[1:]:
                await complete(s, pool.http[0], p)
            took = await agree(pool, epp, ps)
        producer = epp.config.plugins["precise-prefix-cache-producer"]
        assert producer.ingester.counters.batches["gap"] == 1
        assert producer.ingester.counters.replays["complete"] == 1
        assert took < 5


@pytest.mark.parametrize("pool", [False], indirect=True)
async def test_missed_events_without_replay_leave_no_false_hits(pool):
    text = config(pool.kv_offset)
    async with running_epp(pool.endpoints(), text) as (epp, _ch):
        await asyncio.sleep(0.5)
        ps = [prompt(i) for i in range(12)]
        async with aiohttp.ClientSession() as s:
            await complete(s, pool.http[0], ps[0])
            await agree(pool, epp, ps[:1])
            pool.servers[0].publisher.drop_next = 5
            for p in ps[1:]:
                await complete(s, pool.http[0], p)
            deadline = time.monotonic() + 5
            producer = epp.config.plugins["precise-prefix-cache-producer"]
            while not producer.ingester.counters.batches["gap"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
        # Dropped and rebuilt: never a block the server does not hold; what came after is known.
        for p in ps:
            assert believed(epp, "sim-0", p) <= pool.truth(0, p)
        assert believed(epp, "sim-0", ps[-1]) == pool.truth(0, ps[-1]) == 6


async def test_chat_request_is_tokenized_by_the_server_and_routed_to_its_prefix(pool):
    system = {"role": "system", "content": " ".join(f"rule{i} applies" for i in range(60))}
    async with running_epp(pool.endpoints(), config(pool.kv_offset)) as (epp, ch):
        await asyncio.sleep(0.5)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{pool.http[0]}/v1/chat/completions",
                json={"model": MODEL, "messages": [system, {"role": "user", "content": "first"}], "max_tokens": 2},
            ) as r,
        ):
            assert r.status == 200
        producer = epp.config.plugins["precise-prefix-cache-producer"]
        deadline = time.monotonic() + 5
        while producer.index.blocks_of("sim-0") == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        conv = Conversation(ch)
        await conv.send(request_headers("/v1/chat/completions"))
        await conv.send(
            request_body(
                orjson.dumps(
                    {
                        "model": MODEL,
                        "max_tokens": 2,
                        "messages": [system, {"role": "user", "content": "second question"}],
                    }
                )
            )
        )
        dest = set_headers((await conv.recv()).request_headers.response)["x-gateway-destination-endpoint"]
        await conv.recv()
        await conv.send(response_headers({":status": "200"}, eos=True))
        await conv.close()
        assert dest == f"127.0.0.1:{pool.http[0]}"
        tp = epp.config.plugins["token-producer"]
        assert tp.counts["remote"] == 1 and tp.counts["failed"] == 0

"""The HTTP surface, against real sockets on 127.0.0.1 with small time scales."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from epp.sim.costmodel import CostModel
from epp.sim.engine import EngineConfig
from epp.sim.tokenizer import Tokenizer, render_chat

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def _post(session, url, body, raw=False):
    async with session.post(url, json=body) if not raw else session.post(url, data=body) as r:
        return r.status, r.headers, await r.json(content_type=None)


async def test_openai_client_parses_stream_and_usage(start_fleet, make_replica):
    fleet = await start_fleet(make_replica(0, lora_modules=("sql",)))
    url = fleet.urls[0]
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    try:
        msgs = [{"role": "user", "content": "Write a haiku about routers."}]
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        content, finish, usage, roles = [], None, None, []
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                if ch.delta.role:
                    roles.append(ch.delta.role)
                if ch.delta.content:
                    content.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
        assert roles == ["assistant"] and len(content) == 12 and finish == "length"
        expected_prompt = len(Tokenizer().encode(render_chat(msgs)))
        assert usage.completion_tokens == 12 and usage.prompt_tokens == expected_prompt
        assert usage.total_tokens == expected_prompt + 12
        assert usage.prompt_tokens_details.cached_tokens == 0

        # Completions, streamed without include_usage: no usage chunk at all.
        stream = await client.completions.create(
            model="sql", prompt="SELECT", max_tokens=5, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = [c async for c in stream]
        assert len(chunks) == 5 and all(c.usage is None for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "length"

        # Non-streaming, same prompt twice: same text (deterministic), headers name the server.
        raw = await client.completions.with_raw_response.create(model=MODEL, prompt="Hello world", max_tokens=8)
        a = raw.parse()
        assert raw.headers["x-inference-pod"] == "sim-0" and raw.headers["x-inference-port"] == url.rsplit(":", 1)[1]
        b = await client.completions.create(model=MODEL, prompt="Hello world", max_tokens=8)
        assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == b.usage.completion_tokens
        assert a.usage.prompt_tokens == 3  # BOS + "Hello" + " world"

        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL, "sql"]
    finally:
        await client.close()


async def test_errors_are_openai_objects_and_server_survives(start_fleet, make_replica):
    fleet = await start_fleet(make_replica(0, engine=EngineConfig(num_gpu_blocks=256, max_model_len=100)))
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:
        status, headers, body = await _post(s, url + "/v1/completions", b"{not json", raw=True)
        assert status == 400 and body["error"]["code"] == 400 and body["error"]["type"] == "BadRequestError"
        assert headers["x-inference-pod"] == "sim-0"
        status, _, body = await _post(s, url + "/v1/completions", {"model": "nope", "prompt": "hi"})
        assert status == 404 and "does not exist" in body["error"]["message"]
        status, _, body = await _post(s, url + "/v1/completions", {"model": MODEL, "prompt": "word " * 120})
        assert status == 400 and "maximum context length is 100" in body["error"]["message"]
        status, _, body = await _post(s, url + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 99})
        assert status == 400
        for bad in (
            {"model": MODEL},
            {"model": MODEL, "prompt": [1, -5]},
            {"model": MODEL, "prompt": "x", "max_tokens": "3"},
            {"model": MODEL, "messages": "hi"},
            [],
            {"model": MODEL, "prompt": "x", "stream_options": {}},
        ):
            status, _, body = await _post(s, url + "/v1/completions", bad)
            assert status == 400, bad
        status, _, body = await _post(
            s, url + "/v1/completions", {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 2}
        )
        assert status == 200 and body["usage"]["prompt_tokens"] == 3
        async with s.get(url + "/health") as r:
            assert r.status == 200 and r.headers["x-inference-port"] == url.rsplit(":", 1)[1]


async def test_fail_rate_injects_500(start_fleet, make_replica):
    fleet = await start_fleet(make_replica(0, fail_rate=1.0))
    async with aiohttp.ClientSession() as s:
        status, _, body = await _post(
            s, fleet.urls[0] + "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        )
    assert status == 500 and body["error"]["code"] == 500


async def _ttft(session, url, prompt_ids):
    t0 = time.perf_counter()
    body = {
        "model": MODEL,
        "prompt": prompt_ids,
        "max_tokens": 2,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    async with session.post(url + "/v1/completions", json=body) as r:
        first = None
        usage = None
        async for line in r.content:
            if first is None and line.startswith(b"data: {"):
                first = time.perf_counter() - t0
            if b'"usage"' in line:
                import orjson

                usage = orjson.loads(line[6:])["usage"]
    return first, usage


async def test_cached_prefix_ttft_drop_matches_cost_model_over_http(start_fleet, make_replica):
    cost = CostModel()
    fleet = await start_fleet(make_replica(0, time_scale=1.0, cost=cost))
    shared = [(i * 7919) % 100_000 + 1 for i in range(2048)]
    async with aiohttp.ClientSession() as s:
        await _ttft(s, fleet.urls[0], [5, 6, 7])  # warm the connection and code paths
        cold, u1 = await _ttft(s, fleet.urls[0], shared + [11] * 16)
        warm, u2 = await _ttft(s, fleet.urls[0], shared + [12] * 16)
    assert u1["prompt_tokens_details"]["cached_tokens"] == 0
    assert u2["prompt_tokens_details"]["cached_tokens"] == 2048
    predicted = cost.prefill_seconds(2064) - cost.prefill_seconds(16, context_before=2048)
    assert predicted > 0.2
    assert cold - warm == pytest.approx(predicted, abs=0.05)
    assert warm == pytest.approx(cost.frontend_latency + cost.prefill_seconds(16, context_before=2048), abs=0.05)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


async def test_metrics_under_load_and_disconnect_frees_sequence(start_fleet, make_replica):
    cfg = EngineConfig(max_num_seqs=4, num_gpu_blocks=512, max_model_len=4096)
    fleet = await start_fleet(make_replica(0, engine=cfg, time_scale=0.05))
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:

        async def one(i):
            return await _post(
                s,
                url + "/v1/completions",
                {"model": MODEL, "prompt": [i + 1] * 200, "max_tokens": 60, "ignore_eos": True},
            )

        idle = await (await s.get(url + "/metrics")).text()
        tasks = [asyncio.create_task(one(i)) for i in range(10)]
        seen_wait, seen_kv = 0.0, 0.0
        for _ in range(100):
            await asyncio.sleep(0.01)
            text = await (await s.get(url + "/metrics")).text()
            seen_wait = max(seen_wait, _metric(text, "vllm:num_requests_waiting"))
            seen_kv = max(seen_kv, _metric(text, "vllm:kv_cache_usage_perc"))
            assert _metric(text, "vllm:num_requests_running") <= 4
            if seen_wait >= 6 and seen_kv > 0.05:  # both, not the first seen: a busy box samples late
                break
        results = await asyncio.gather(*tasks)
        assert all(r[0] == 200 and r[2]["usage"]["completion_tokens"] == 60 for r in results)
        assert _metric(idle, "vllm:kv_cache_usage_perc") == 0.0
        assert seen_kv > 0.05 and seen_wait >= 6  # 10 requests, 4 slots

        # A client that leaves mid-stream: its sequence is aborted and its blocks freed.
        body = {"model": MODEL, "prompt": [9] * 300, "max_tokens": 3000, "stream": True, "ignore_eos": True}
        async with s.post(url + "/v1/completions", json=body) as r:
            n = 0
            async for line in r.content:
                n += line.startswith(b"data:")
                if n >= 3:
                    break
            text = await (await s.get(url + "/metrics")).text()
            assert _metric(text, "vllm:num_requests_running") == 1
            r.close()
        for _ in range(100):
            await asyncio.sleep(0.01)
            text = await (await s.get(url + "/metrics")).text()
            if _metric(text, "vllm:num_requests_running") == 0:
                break
        assert _metric(text, "vllm:num_requests_running") == 0
        assert _metric(text, "vllm:kv_cache_usage_perc") == 0.0
        assert 'finished_reason="abort"} 1.0' in text
        assert _metric(text, "vllm:prefix_cache_queries_total") > 0
        assert 'vllm:cache_config_info{block_size="16"' in text and 'num_gpu_blocks="512"' in text


async def test_lora_metrics_show_running_and_waiting_adapters(start_fleet, make_replica):
    cfg = EngineConfig(max_loras=1, num_gpu_blocks=512, max_model_len=4096)
    fleet = await start_fleet(make_replica(0, engine=cfg, lora_modules=("a", "b"), time_scale=0.05))
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s:
        tasks = [
            asyncio.create_task(
                _post(s, url + "/v1/completions", {"model": m, "prompt": "x y z", "max_tokens": 80, "ignore_eos": True})
            )
            for m in ("a", "b")
        ]
        line = ""
        for _ in range(200):
            await asyncio.sleep(0.01)
            text = await (await s.get(url + "/metrics")).text()
            line = next(ln for ln in text.splitlines() if ln.startswith("vllm:lora_requests_info{"))
            if 'running_lora_adapters="a"' in line or 'running_lora_adapters="b"' in line:
                break
        assert 'max_lora="1"' in line
        assert ('running_lora_adapters="a",waiting_lora_adapters="b"' in line) or (
            'running_lora_adapters="b",waiting_lora_adapters="a"' in line
        )
        assert all(r[0] == 200 for r in await asyncio.gather(*tasks))


@pytest.mark.parametrize(
    "kind,names",
    [
        ("sglang", ["sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage", 'page_size="16"']),
        ("trtllm-serve", ["trtllm_num_requests_waiting", "trtllm_kv_cache_utilization", "trtllm_kv_cache_max_blocks"]),
        (
            "triton-tensorrt-llm",
            [
                'request_type="waiting"',
                'request_type="scheduled"',
                'kv_cache_block_type="fraction"',
                'kv_cache_block_type="tokens_per"',
            ],
        ),
    ],
)
async def test_other_engines_metric_names(start_fleet, make_replica, kind, names):
    fleet = await start_fleet(make_replica(0, engine_kind=kind))
    async with aiohttp.ClientSession() as s:
        text = await (await s.get(fleet.urls[0] + "/metrics")).text()
    assert all(n in text for n in names) and "vllm:" not in text

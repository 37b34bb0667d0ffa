"""The prefill gate over real gRPC: which request waits, what wakes it, what a vanished client costs."""

from __future__ import annotations

import asyncio

import orjson

from epp.datalayer.endpoint import Endpoint
from tests.support.extproc_client import (
    Conversation,
    request_body,
    request_headers,
    response_body,
    response_headers,
    set_headers,
)
from tests.support.inproc import running_epp

DESTINATION = "x-gateway-destination-endpoint"


def config(max_wait: str = "30s") -> str:
    # One long prefill per endpoint; a prompt of 100 estimated tokens (400 bytes) counts as long.
    return f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
- type: estimated-ttft-scorer
- type: max-score-picker
- type: prefill-gate
  parameters: {{minTokens: 100, maxPerEndpoint: 1, maxWait: {max_wait}, recheck: 50ms}}
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: estimated-ttft-scorer
  - pluginRef: max-score-picker
"""


def one_endpoint() -> list[Endpoint]:
    return [Endpoint(name="127.0.0.1:8000", address="127.0.0.1", port=8000)]


def two_endpoints() -> list[Endpoint]:
    return [Endpoint(name=f"127.0.0.1:{p}", address="127.0.0.1", port=p) for p in (8000, 8001)]


def body(prompt: str) -> bytes:
    return orjson.dumps({"model": "m1", "prompt": prompt, "max_tokens": 3, "stream": True})


COLD_A = " ".join(f"alpha{i}" for i in range(200))  # ~1,400 bytes, nothing cached
COLD_B = " ".join(f"bravo{i}" for i in range(200))
COLD_C = " ".join(f"charlie{i}" for i in range(200))


async def start(ch, prompt: str) -> Conversation:
    conv = Conversation(ch, timeout=30)
    await conv.send(request_headers())
    await conv.send(request_body(body(prompt)))
    return conv


async def routed_to(conv: Conversation, timeout: float) -> str:
    first = await asyncio.wait_for(conv.recv(), timeout)
    assert first.WhichOneof("response") == "request_headers"
    await conv.recv()  # the body goes back after the headers answer
    return set_headers(first.request_headers.response)[DESTINATION]


async def until(cond, tries: int = 100) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.02)
    assert cond()


def held(epp) -> float:
    return epp.metrics.registry.get_sample_value("epp_prefill_gate_held")


async def fill_both(epp, ch, gated: bool = True) -> tuple[Conversation, Conversation]:
    """One cold prompt on each endpoint: every slot is taken. Returns (on 8000, on 8001)."""
    a = await start(ch, COLD_A)
    first = await routed_to(a, 5)
    c = await start(ch, COLD_C)
    second = await routed_to(c, 5)
    assert {first, second} == {"127.0.0.1:8000", "127.0.0.1:8001"}  # the loaded one is avoided
    # Only the gate counts long prefills.
    assert all(e.inflight.long_prefills == int(gated) for e in epp.datastore.endpoints())
    return (a, c) if first == "127.0.0.1:8000" else (c, a)


async def test_a_cold_prompt_waits_until_a_prefill_ends_and_short_ones_do_not():
    async with running_epp(two_endpoints(), config()) as (epp, ch):
        on_8000, on_8001 = await fill_both(epp, ch)
        eps = {e.port: e for e in epp.datastore.endpoints()}

        b = await start(ch, COLD_B)
        b_answer = asyncio.ensure_future(b.recv())
        done, _ = await asyncio.wait({b_answer}, timeout=0.4)
        assert not done  # held: no answer, no load counted, but the scorer sees it waiting
        assert held(epp) == 1
        assert sum(e.inflight.requests for e in eps.values()) == 2
        assert sum(e.inflight.held_tokens for e in eps.values()) == len(COLD_B) // 4  # all of it uncached

        short = await start(ch, "hi")  # below minTokens: never held
        assert await routed_to(short, 5) in {"127.0.0.1:8000", "127.0.0.1:8001"}

        # The first response byte on 8001 means its prefill is done: B goes now, and there.
        await on_8001.send(response_headers({":status": "200", "content-type": "text/event-stream"}))
        await on_8001.recv()
        await on_8001.send(response_body(b'data: {"choices": []}\n\n', eos=False))
        first = await asyncio.wait_for(b_answer, 5)
        assert set_headers(first.request_headers.response)[DESTINATION] == "127.0.0.1:8001"
        assert held(epp) == 0 and all(e.inflight.held_tokens == 0 for e in eps.values())
        assert epp.metrics.registry.get_sample_value("epp_prefill_gate_hold_seconds_count") == 1
        assert eps[8001].inflight.long_prefills == 1  # B's, now outstanding
        for conv in (on_8000, on_8001, b, short):
            conv.call.cancel()
        await until(lambda: all(e.inflight.requests == 0 for e in eps.values()))
        assert all(e.inflight.long_prefills == 0 and e.inflight.prefill_tokens == 0 for e in eps.values())


async def test_with_a_single_endpoint_nothing_is_held():
    # Waiting in the EPP cannot find a better server when there is no other one.
    async with running_epp(one_endpoint(), config()) as (epp, ch):
        ep = epp.datastore.endpoints()[0]
        a = await start(ch, COLD_A)
        await routed_to(a, 5)
        b = await start(ch, COLD_B)
        assert await routed_to(b, 5) == "127.0.0.1:8000"
        assert ep.inflight.long_prefills == 2
        assert held(epp) == 0
        a.call.cancel()
        b.call.cancel()


async def test_a_held_request_is_sent_anyway_after_max_wait():
    async with running_epp(two_endpoints(), config(max_wait="300ms")) as (epp, ch):
        pair = await fill_both(epp, ch)
        b = await start(ch, COLD_B)  # neither ever answers: B must not wait forever
        assert await routed_to(b, 5) in {"127.0.0.1:8000", "127.0.0.1:8001"}
        eps = epp.datastore.endpoints()
        assert sum(e.inflight.long_prefills for e in eps) == 3
        assert held(epp) == 0
        for conv in (*pair, b):
            conv.call.cancel()
        await until(lambda: all(e.inflight.requests == 0 for e in eps))
        assert all(e.inflight.long_prefills == 0 for e in eps)


async def test_a_client_that_leaves_while_held_costs_nothing():
    async with running_epp(two_endpoints(), config()) as (epp, ch):
        on_8000, on_8001 = await fill_both(epp, ch)
        eps = {e.port: e for e in epp.datastore.endpoints()}
        b = await start(ch, COLD_B)
        await until(lambda: held(epp) == 1)
        b.call.cancel()
        await until(lambda: held(epp) == 0)
        assert all(e.inflight.held_tokens == 0 for e in eps.values())
        assert all(e.inflight.requests == 1 and e.inflight.long_prefills == 1 for e in eps.values())
        # The prompt on 8000 finishes normally; nothing is left behind and a new cold prompt goes
        # straight through to the freed endpoint.
        await on_8000.send(response_headers({":status": "200", "content-type": "application/json"}))
        await on_8000.recv()
        await on_8000.send(response_body(b"{}", eos=True))
        await on_8000.recv()
        await until(lambda: eps[8000].inflight.requests == 0)
        assert eps[8000].inflight.long_prefills == 0
        c = await start(ch, COLD_B)
        assert await routed_to(c, 5) == "127.0.0.1:8000"
        for conv in (on_8001, c):
            conv.call.cancel()


async def test_without_the_gate_in_the_config_nothing_is_held():
    async with running_epp(
        two_endpoints(),
        config()
        .replace("- type: prefill-gate\n", "")
        .replace("  parameters: {minTokens: 100, maxPerEndpoint: 1, maxWait: 30s, recheck: 50ms}\n", ""),
    ) as (epp, ch):
        pair = await fill_both(epp, ch, gated=False)
        b = await start(ch, COLD_B)
        assert await routed_to(b, 5) in {"127.0.0.1:8000", "127.0.0.1:8001"}
        assert held(epp) == 0
        for conv in (*pair, b):
            conv.call.cancel()

"""Peers that break the protocol or send hostile data cost only their own stream (issue 13).

Over real gRPC against an in-process EPP: in-flight accounting is exactly-once whatever order
messages come in, a model rewrite means the same to the EPP and the server, metric labels stay
bounded whatever model names clients send, and large responses are relayed as they arrive.
"""

from __future__ import annotations

import itertools

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import generate_latest

from epp.datalayer.endpoint import Endpoint
from tests.support.extproc_client import (
    Conversation,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
    streamed_body,
)
from tests.support.inproc import running_epp

MODEL = "m1"


def eps(n: int = 2) -> list[Endpoint]:
    return [Endpoint(name=f"127.0.0.{i + 1}:8000", address=f"127.0.0.{i + 1}", port=8000) for i in range(n)]


def completion(model: str = MODEL, **extra) -> bytes:
    return orjson.dumps({"model": model, "prompt": "hello world", "max_tokens": 3, **extra})


def kinds(responses) -> list[str]:
    return [r.WhichOneof("response") for r in responses]


def running(epp, model: str = MODEL) -> float:
    return epp.metrics.registry.get_sample_value("inference_objective_running_requests", {"model_name": model}) or 0


async def send_all(channel, messages) -> list:
    """Like run_stream, but the server may end the stream before every message is written."""
    call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=10)
    try:
        for m in messages:
            await call.write(m)
        await call.done_writing()
    except (grpc.aio.AioRpcError, grpc.aio.UsageError):
        pass  # the server answered and closed: read what it said
    return [r async for r in call]


STREAM = {
    "req_h": lambda: request_headers(),
    "req_b": lambda: request_body(completion(), eos=True),
    "resp_h": lambda: response_headers({":status": "200", "content-type": "application/json"}),
    "resp_b": lambda: response_body(b'{"usage":{"prompt_tokens":1}}', eos=True),
}


@pytest.mark.parametrize("order", list(itertools.permutations(STREAM)), ids="-".join)
async def test_inflight_is_released_exactly_once_in_any_message_order(order):
    async with running_epp(eps()) as (epp, ch):
        for _ in range(3):
            out = await send_all(ch, [STREAM[k]() for k in order])
            if (order[0] == "req_h" and order.index("resp_h") < order.index("req_b")) or order.index(
                "resp_b"
            ) < order.index("req_b"):
                # A request after the response began is refused, not routed.
                assert out[-1].immediate_response.status.code == 400
        assert [e.inflight.requests for e in epp.datastore.endpoints()] == [0, 0]
        assert [e.inflight.prompt_tokens for e in epp.datastore.endpoints()] == [0, 0]
        assert running(epp) == 0


async def test_the_issue_13_order_is_refused_and_leaves_nothing_counted():
    async with running_epp(eps()) as (epp, ch):
        out = await run_stream(ch, [STREAM["resp_h"](), STREAM["resp_b"](), STREAM["req_h"](), STREAM["req_b"]()])
        assert out[-1].immediate_response.status.code == 400
        assert b"request_headers received after the response began" in out[-1].immediate_response.body
        # ... and a well-behaved stream after it is routed and released as usual.
        out = await run_stream(ch, [STREAM[k]() for k in ("req_h", "req_b", "resp_h", "resp_b")])
        assert kinds(out)[0] == "request_headers"
        assert sum(e.inflight.requests for e in epp.datastore.endpoints()) == 0
        assert running(epp) == 0


async def test_oversize_body_is_413():
    async with running_epp(eps(), max_request_body_bytes=1000) as (_epp, ch):
        out = await run_stream(ch, [request_headers(), request_body(completion(prompt="x" * 2000))])
        assert kinds(out) == ["immediate_response"]
        assert out[0].immediate_response.status.code == 413
        assert b"larger than the 1000-byte limit" in out[0].immediate_response.body


async def test_duplicate_model_key_under_a_rewrite_is_400_and_counts_nothing():
    raw = b'{"model":"a","model":"b","prompt":"hi"}'
    async with running_epp(eps()) as (epp, ch):
        out = await run_stream(ch, [request_headers(extra={"x-gateway-model-name-rewrite": "c"}), request_body(raw)])
        assert kinds(out) == ["immediate_response"]
        assert out[0].immediate_response.status.code == 400
        assert b"model" in out[0].immediate_response.body
        assert sum(e.inflight.requests for e in epp.datastore.endpoints()) == 0
        reg = epp.metrics.registry
        assert (
            reg.get_sample_value(
                "inference_objective_request_total", {"model_name": "b", "target_model_name": "c", "priority": "0"}
            )
            is None
        )
        assert running(epp, "b") == 0


async def test_metrics_page_stays_small_whatever_model_names_clients_send():
    async with running_epp(eps()) as (epp, ch):
        for i in range(2000):
            await run_stream(ch, [request_headers(), request_body(completion(f"client-model-{i}"))])
        await run_stream(ch, [request_headers(), request_body(completion("y" * (1 << 20)))])
        page = generate_latest(epp.metrics.registry)
        assert len(page) < 2_000_000, len(page)
        assert b"y" * 1000 not in page
        reg = epp.metrics.registry
        # The first few names get labels; the rest, and the huge one, are counted as "other".
        assert (
            reg.get_sample_value(
                "inference_objective_request_total",
                {"model_name": "client-model-0", "target_model_name": "client-model-0", "priority": "0"},
            )
            == 1
        )
        assert (
            reg.get_sample_value(
                "inference_objective_request_total",
                {"model_name": "other", "target_model_name": "other", "priority": "0"},
            )
            > 1900
        )


async def test_a_model_the_pool_serves_or_answers_gets_its_label_after_the_cap():
    async with running_epp(eps()) as (epp, ch):
        for i in range(100):  # use up the first-come labels
            await run_stream(ch, [request_headers(), request_body(completion(f"junk-{i}"))])
        served = epp.datastore.endpoints()[0]
        served.metrics.served_models = frozenset({"served-model"})
        epp.director.model_labels._known_at = float("-inf")  # what the 1 s refresh would do
        await run_stream(ch, [request_headers(), request_body(completion("served-model"))])
        # A name only the server's 2xx vouches for: "other" at first, its own label once answered.
        answered = [
            request_headers(),
            request_body(completion("answered-model")),
            response_headers({":status": "200", "content-type": "application/json"}),
            response_body(b"{}", eos=True),
        ]
        await run_stream(ch, answered)
        await run_stream(ch, answered)
        reg = epp.metrics.registry

        def total(model):
            return reg.get_sample_value(
                "inference_objective_request_total", {"model_name": model, "target_model_name": model, "priority": "0"}
            )

        assert total("served-model") == 1
        assert total("answered-model") == 1  # the second request, after the first was answered


async def test_large_json_response_is_relayed_as_it_arrives_and_usage_read_from_its_tail():
    chunk = b" " * 60_000
    body_head = b'{"object":"list","data":[' + b"0," * 1000 + b"0]"
    tail = b',"usage":{"prompt_tokens":77,"total_tokens":77}}'
    async with running_epp(eps(1)) as (epp, ch):
        conv = Conversation(ch, timeout=60)
        await conv.send(request_headers("/v1/embeddings"))
        await conv.send(request_body(orjson.dumps({"model": MODEL, "input": "hello"})))
        assert kinds([await conv.recv(), await conv.recv()]) == ["request_headers", "request_body"]
        await conv.send(response_headers({":status": "200", "content-type": "application/json"}))
        assert (await conv.recv()).WhichOneof("response") == "response_headers"
        sent = [body_head] + [chunk] * 40  # 2.4 MB, past the size parsed whole
        for part in sent:
            await conv.send(response_body(part, eos=False))
            r = await conv.recv()  # answered before the next chunk is sent: nothing is buffered
            assert r.response_body.response.body_mutation.streamed_response.body == part
        await conv.send(response_body(tail, eos=True))
        rest = await conv.close()
        body, eos = streamed_body(rest, "response_body")
        assert body == tail and eos == [True]
    v = epp.metrics.registry.get_sample_value(
        "inference_objective_input_tokens_sum", {"model_name": MODEL, "target_model_name": MODEL}
    )
    assert v == 77
    assert sum(e.inflight.requests for e in epp.datastore.endpoints()) == 0


async def test_large_request_body_is_parsed_off_the_event_loop_and_routed_like_any_other():
    from tests.support.extproc_client import body_chunks, set_headers

    # ~12 MB of token ids: about a quarter of a second to parse on this machine, which every
    # other pick would wait out if it ran on the event loop.
    big = orjson.dumps({"model": MODEL, "input": [[1234] * 512 for _ in range(5000)]})
    async with running_epp(eps(1)) as (epp, ch):
        out = await run_stream(ch, [request_headers("/v1/embeddings"), *body_chunks(big, 1 << 20)], timeout=60)
        assert set_headers(out[0].request_headers.response)["x-gateway-destination-endpoint"] == "127.0.0.1:8000"
        body, _ = streamed_body(out)
        assert body == big
        pool = epp.director.body_parser._pool
        assert pool is not None and len(pool._processes) == 1  # parsed by the worker process
        bad = b'{"model": "m1", "input": [' + b"1," * (1 << 20) + b"]"  # truncated JSON, over the threshold
        out = await run_stream(ch, [request_headers("/v1/embeddings"), *body_chunks(bad, 1 << 20)], timeout=60)
        assert out[-1].immediate_response.status.code == 400
        assert b"error unmarshaling request body" in out[-1].immediate_response.body
        assert sum(e.inflight.requests for e in epp.datastore.endpoints()) == 0
        assert (
            epp.metrics.registry.get_sample_value(
                "inference_objective_request_error_total",
                {"model_name": "", "target_model_name": "", "error_code": "BadRequest"},
            )
            == 1
        )

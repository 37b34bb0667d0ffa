"""The ext_proc wire protocol, driven directly over real gRPC against an in-process EPP."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from epp.datalayer.endpoint import Endpoint
from epp.extproc.messages import BODY_CHUNK_LIMIT, pb
from epp.scheduling import configs
from tests.support.extproc_client import (
    BUFFERED,
    Conversation,
    body_chunks,
    request_body,
    request_headers,
    request_trailers,
    response_body,
    response_headers,
    response_trailers,
    run_stream,
    set_headers,
    streamed_body,
)
from tests.support.inproc import running_epp

MODEL = "m1"


def eps(n: int = 2) -> list[Endpoint]:
    return [Endpoint(name=f"127.0.0.{i + 1}:8000", address=f"127.0.0.{i + 1}", port=8000) for i in range(n)]


def completion(**extra) -> bytes:
    return orjson.dumps({"model": MODEL, "prompt": "hello world", "max_tokens": 3, **extra})


def kinds(responses) -> list[str]:
    return [r.WhichOneof("response") for r in responses]


async def test_success_headers_withheld_until_body_end_then_body_chunks():
    async with running_epp(eps(1)) as (_epp, ch):
        conv = Conversation(ch)
        await conv.send(request_headers())
        await conv.send(request_body(b'{"model": "m1", ', eos=False))
        await conv.send(request_body(b'"prompt": "hi"}', eos=True))
        first = await conv.recv()
        assert first.WhichOneof("response") == "request_headers"
        common = first.request_headers.response
        hdrs = set_headers(common)
        assert hdrs["x-gateway-destination-endpoint"] == "127.0.0.1:8000"
        assert hdrs["content-length"] == str(len(b'{"model": "m1", "prompt": "hi"}'))
        assert common.clear_route_cache is True
        md = first.dynamic_metadata.fields["envoy.lb"].struct_value.fields
        assert md["x-gateway-destination-endpoint"].string_value == "127.0.0.1:8000"
        rest = await conv.close()
        body, eos = streamed_body(rest)
        # Unchanged body goes back byte-identical (spacing included: no re-serialisation).
        assert body == b'{"model": "m1", "prompt": "hi"}'
        assert eos == [True]


async def test_nothing_is_answered_before_the_body_ends():
    async with running_epp(eps(1)) as (_epp, ch):
        conv = Conversation(ch, timeout=5)
        await conv.send(request_headers())
        await conv.send(request_body(b'{"model": "m1",', eos=False))
        import asyncio

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conv.recv(), 0.3)
        conv.call.cancel()


async def test_large_body_is_returned_in_62000_byte_chunks():
    prompt = "x" * (4 * 1024 * 1024)
    raw = orjson.dumps({"model": MODEL, "prompt": prompt})
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(ch, [request_headers(), *body_chunks(raw, 16384)], timeout=30)
        assert kinds(out)[0] == "request_headers"
        body, eos = streamed_body(out)
        assert body == raw
        assert eos[-1] is True and not any(eos[:-1])
        sizes = [len(r.request_body.response.body_mutation.streamed_response.body) for r in out[1:]]
        assert max(sizes) <= BODY_CHUNK_LIMIT and len(sizes) == -(-len(raw) // BODY_CHUNK_LIMIT)


async def test_chunks_after_end_of_stream_are_ignored():
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(
            ch, [request_headers(), request_body(completion(), eos=True), request_body(b"garbage after eos", eos=True)]
        )
        body, eos = streamed_body(out)
        assert body == completion() and eos == [True]


async def test_bodyless_request_answered_at_once_with_a_random_endpoint():
    async with running_epp(eps(3)) as (_epp, ch):
        seen = set()
        for _ in range(30):
            out = await run_stream(ch, [request_headers("/v1/models", eos=True, method="GET")])
            assert kinds(out) == ["request_headers"]
            seen.add(set_headers(out[0].request_headers.response)["x-gateway-destination-endpoint"])
        assert seen == {"127.0.0.1:8000", "127.0.0.2:8000", "127.0.0.3:8000"}


async def test_model_rewrite_header_edits_only_the_model_value_and_is_removed():
    raw = b'{"prompt":"caf\xc3\xa9 \\u00e9", "model" :  "m1", "n": 1.0, "big": 12345678901234567890, "z":[{"model":"m1"}]}'
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(ch, [request_headers(extra={"x-gateway-model-name-rewrite": "m2"}), request_body(raw)])
        body, _ = streamed_body(out)
        assert body == raw.replace(b'"model" :  "m1"', b'"model" :  "m2"')
        common = out[0].request_headers.response
        assert set_headers(common)["content-length"] == str(len(body))
        assert "x-gateway-model-name-rewrite" in list(common.header_mutation.remove_headers)


async def test_response_model_name_is_written_back_and_length_header_dropped():
    async with running_epp(eps(1)) as (_epp, ch):
        resp_json = b'{"id":"x","object":"text_completion","model":"m2","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
        out = await run_stream(
            ch,
            [
                request_headers(extra={"x-gateway-model-name-rewrite": "m2"}),
                request_body(completion()),
                response_headers(
                    {":status": "200", "content-type": "application/json", "content-length": str(len(resp_json))}
                ),
                response_body(resp_json[:40], eos=False),
                response_body(resp_json[40:], eos=True),
            ],
        )
        rh = next(r for r in out if r.WhichOneof("response") == "response_headers")
        assert "content-length" in list(rh.response_headers.response.header_mutation.remove_headers)
        assert set_headers(rh.response_headers.response)["x-went-into-resp-headers"] == "true"
        body, eos = streamed_body(out, "response_body")
        assert body == resp_json.replace(b'"model":"m2"', b'"model":"m1"')
        assert eos == [True]  # buffered JSON is sent once, at the end


async def test_sse_chunks_are_echoed_as_they_come_and_usage_is_recorded():
    chunks = [
        b'data: {"id":"1","object":"text_completion","model":"m1","choices":[{"text":"a"}]}\n\n',
        b'data: {"id":"1","object":"text_completion","model":"m1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":3,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":8}}}\n\n',
        b"data: [DONE]\n\n",
    ]
    async with running_epp(eps(1)) as (epp, ch):
        conv = Conversation(ch)
        await conv.send(request_headers())
        await conv.send(request_body(completion(stream=True)))
        assert (await conv.recv()).WhichOneof("response") == "request_headers"
        assert (await conv.recv()).WhichOneof("response") == "request_body"
        await conv.send(response_headers({":status": "200", "content-type": "text/event-stream"}))
        assert (await conv.recv()).WhichOneof("response") == "response_headers"
        for i, c in enumerate(chunks):
            await conv.send(response_body(c, eos=(i == len(chunks) - 1)))
            r = await conv.recv()  # echoed before the next chunk is sent
            sr = r.response_body.response.body_mutation.streamed_response
            assert sr.body == c and sr.end_of_stream == (i == len(chunks) - 1)
        await conv.close()
    reg = epp.metrics.registry
    assert (
        reg.get_sample_value("inference_objective_input_tokens_sum", {"model_name": "m1", "target_model_name": "m1"})
        == 11
    )
    assert (
        reg.get_sample_value("inference_objective_output_tokens_sum", {"model_name": "m1", "target_model_name": "m1"})
        == 3
    )
    assert (
        reg.get_sample_value(
            "inference_objective_prompt_cached_tokens_sum", {"model_name": "m1", "target_model_name": "m1"}
        )
        == 8
    )


@pytest.mark.parametrize(
    "content_type,body",
    [
        (
            "text/event-stream",
            b'data: {"object":"chat.completion.chunk","model":"m1","choices":[]}\n\n'
            b'data: {"object":"chat.completion.chunk","model":"m1","choices":[],"usage":{"prompt_tokens":21,"completion_tokens":4}}\n\n'
            b"data: [DONE]\n\n",
        ),
        (
            "application/json",
            b'{"object":"text_completion","model":"m1","usage":{"prompt_tokens":21,"completion_tokens":4}}',
        ),
    ],
    ids=["sse", "json"],
)
async def test_usage_of_a_stream_first_seen_at_its_response_is_recorded(content_type, body):
    """A gateway that skips the request phases still gets its tokens counted (model labels empty:
    the EPP never saw the request); nothing is counted in flight."""
    async with running_epp(eps(1)) as (epp, ch):
        out = await run_stream(
            ch, [response_headers({":status": "200", "content-type": content_type}), response_body(body, True)]
        )
        assert kinds(out)[0] == "response_headers"
        assert streamed_body(out, "response_body")[0] == body
    reg = epp.metrics.registry
    labels = {"model_name": "", "target_model_name": ""}
    assert reg.get_sample_value("inference_objective_input_tokens_sum", labels) == 21
    assert reg.get_sample_value("inference_objective_output_tokens_sum", labels) == 4
    # Not a request the EPP timed: no duration, no NTPOT.
    assert reg.get_sample_value("inference_objective_request_duration_seconds_count", labels) == 0
    assert sum(e.inflight.requests for e in epp.datastore.endpoints()) == 0


async def test_response_trailers_flush_buffered_body_then_trailers_response():
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(
            ch,
            [
                request_headers(),
                request_body(completion()),
                response_headers({":status": "200", "content-type": "application/json"}),
                response_body(b'{"a":1}', eos=False),
                response_trailers(),
            ],
        )
        assert kinds(out)[-1] == "response_trailers"
        body, eos = streamed_body(out, "response_body")
        assert body == b'{"a":1}' and eos == [False]


async def test_request_trailers_end_the_body():
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(ch, [request_headers(), request_body(completion(), eos=False), request_trailers()])
        assert kinds(out) == ["request_headers", "request_body", "request_trailers"]
        body, eos = streamed_body(out)
        assert body == completion() and eos == [False]


async def test_model_server_error_counted_by_status_pseudo_header():
    async with running_epp(eps(1)) as (epp, ch):
        await run_stream(
            ch,
            [
                request_headers(),
                request_body(completion()),
                response_headers({":status": "500", "content-type": "application/json"}),
                response_body(b'{"error":"x"}', eos=True),
            ],
        )
    v = epp.metrics.registry.get_sample_value(
        "inference_objective_request_error_total",
        {"model_name": "m1", "target_model_name": "m1", "error_code": "ModelServerError"},
    )
    assert v == 1


@pytest.mark.parametrize(
    "path,body,status,message",
    [
        ("/v1/completions", b"{not json", 400, "BadRequest - error unmarshaling request body"),
        ("/v1/completions", b'{"model": "m1", "prompt": "\xff\xfe"}', 400, "BadRequest - error unmarshaling"),
        ("/v1/completions", b"[1, 2]", 400, "BadRequest - request body must be a JSON object, got an array"),
        ("/v1/completions", b'{"prompt": "hi"}', 400, "BadRequest - model not found in request body"),
        ("/v1/completions", b'{"model": 7, "prompt": "hi"}', 400, "BadRequest - model not found in request body"),
        (
            "/v1/completions",
            b'{"model": "m1"}',
            400,
            "BadRequest - invalid completions request: must have prompt field",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "m1", "messages": []}',
            400,
            "BadRequest - invalid chat completions request: must have valid messages field",
        ),
        ("/v1/responses", b'{"model": "m1"}', 400, "BadRequest - invalid responses request: must have input field"),
        (
            "/v1/conversations",
            b'{"model": "m1", "items": []}',
            400,
            "BadRequest - invalid conversations request: must have items field",
        ),
        ("/v1/embeddings", b'{"model": "m1"}', 400, "BadRequest - invalid embeddings request: must have input field"),
        ("/v1/completions", b"[" * 5000 + b"]" * 5000, 400, "BadRequest - error unmarshaling"),
    ],
)
async def test_bad_bodies_get_400_and_the_server_stays_healthy(path, body, status, message):
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(ch, [request_headers(path), request_body(body)])
        assert kinds(out) == ["immediate_response"]
        ir = out[0].immediate_response
        assert ir.status.code == status
        assert ir.body.decode().startswith("inference error: " + message)
        # The next request on the same channel is served normally.
        ok = await run_stream(ch, [request_headers(), request_body(completion())])
        assert kinds(ok) == ["request_headers", "request_body"]


async def test_no_endpoints_is_503_without_flow_control_and_bodyless_with_no_endpoints_is_500():
    async with running_epp([], configs.text("reference-default")) as (_epp, ch):
        out = await run_stream(ch, [request_headers(), request_body(completion())])
        assert out[0].immediate_response.status.code == 503
        assert out[0].immediate_response.body.startswith(b"inference error: ServiceUnavailable - ")
        out = await run_stream(ch, [request_headers("/v1/models", eos=True, method="GET")])
        assert out[0].immediate_response.status.code == 500
        assert out[0].immediate_response.body == b"inference error: Internal - no pods available in datastore"


FLOW_CONTROL = (
    configs.text("epp-default")
    + """featureGates: [flowControl]
flowControl: {defaultRequestTTL: 30s}
"""
)


async def test_with_flow_control_a_request_waits_for_the_first_endpoint():
    async with running_epp([], FLOW_CONTROL) as (epp, ch):
        conv = Conversation(ch, timeout=30)
        await conv.send(request_headers())
        await conv.send(request_body(completion()))
        answer = asyncio.ensure_future(conv.recv())
        await asyncio.sleep(0.2)
        assert not answer.done() and epp.flow.queued == 1  # scale from zero: it waits in the EPP
        epp.datastore.replace_all([Endpoint("127.0.0.1:8000", "127.0.0.1", 8000)])
        first = await asyncio.wait_for(answer, 5)
        assert set_headers(first.request_headers.response)["x-gateway-destination-endpoint"] == "127.0.0.1:8000"


async def test_subset_hint_restricts_candidates_and_empty_subset_is_503():
    async with running_epp(eps(3)) as (_epp, ch):
        for _ in range(10):
            out = await run_stream(ch, [request_headers(subset=["127.0.0.2:8000"]), request_body(completion())])
            assert set_headers(out[0].request_headers.response)["x-gateway-destination-endpoint"] == "127.0.0.2:8000"
        out = await run_stream(ch, [request_headers(subset="127.0.0.3:8000, 127.0.0.9:1"), request_body(completion())])
        assert set_headers(out[0].request_headers.response)["x-gateway-destination-endpoint"] == "127.0.0.3:8000"
        out = await run_stream(ch, [request_headers(subset=[]), request_body(completion())])
        assert out[0].immediate_response.status.code == 503


async def test_no_endpoint_after_filters_is_429():
    config = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: header-based-testing-filter
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: header-based-testing-filter}, {pluginRef: max-score-picker}]
"""
    async with running_epp(eps(2), config) as (_epp, ch):
        out = await run_stream(
            ch, [request_headers(extra={"test-epp-endpoint-selection": "127.0.0.2"}), request_body(completion())]
        )
        assert set_headers(out[0].request_headers.response)["x-gateway-destination-endpoint"] == "127.0.0.2:8000"
        out = await run_stream(
            ch, [request_headers(extra={"test-epp-endpoint-selection": "10.9.9.9"}), request_body(completion())]
        )
        assert out[0].immediate_response.status.code == 429
        assert out[0].immediate_response.body.startswith(
            b"inference error: ResourceExhausted - failed to find target endpoint"
        )


def served_metadata(value) -> pb.ProcessingRequest:
    r = response_headers({":status": "200", "content-type": "application/json"})
    fields = r.metadata_context.filter_metadata["envoy.lb"].fields
    if isinstance(value, str):
        fields["x-gateway-destination-endpoint-served"].string_value = value
    else:
        fields["x-gateway-destination-endpoint-served"].number_value = value
    return r


async def test_served_endpoint_verifier_echoes_the_gateways_served_endpoint():
    async with running_epp(eps(2), configs.text("conformance")) as (_epp, ch):
        selection = request_headers(extra={"test-epp-endpoint-selection": "127.0.0.2"})
        for served, expected in [
            ("127.0.0.2:8000", "127.0.0.2:8000"),
            ("127.0.0.2:8000\r\nx-evil: 1", None),  # never a header injection
            ("x" * 300, None),
            (8000.0, None),  # not a string
        ]:
            out = await run_stream(
                ch, [selection, request_body(completion()), served_metadata(served), response_body(b"{}", True)]
            )
            assert set_headers(out[0].request_headers.response)["x-gateway-destination-endpoint"] == "127.0.0.2:8000"
            resp = next(o for o in out if o.HasField("response_headers"))
            assert set_headers(resp.response_headers.response).get("x-conformance-test-served-endpoint") == expected
    # Without the verifier in the config, the gateway's metadata is not echoed.
    async with running_epp(eps(2)) as (_epp, ch):
        out = await run_stream(
            ch,
            [
                request_headers(),
                request_body(completion()),
                served_metadata("127.0.0.1:8000"),
                response_body(b"{}", True),
            ],
        )
        resp = next(o for o in out if o.HasField("response_headers"))
        assert "x-conformance-test-served-endpoint" not in set_headers(resp.response_headers.response)


async def test_sheddable_request_is_429_when_saturated_without_flow_control():
    async with running_epp(eps(1), configs.text("reference-default")) as (epp, ch):
        epp.director.objectives.set(__import__("epp.routing.objectives", fromlist=["Objective"]).Objective("batch", -1))
        # Never-scraped metrics count as saturated, so a sheddable request is dropped...
        out = await run_stream(
            ch, [request_headers(extra={"x-gateway-inference-objective": "batch"}), request_body(completion())]
        )
        assert out[0].immediate_response.status.code == 429
        assert b"system saturated, sheddable request dropped" in out[0].immediate_response.body
        # ...while priority >= 0 is never shed.
        out = await run_stream(ch, [request_headers(), request_body(completion())])
        assert kinds(out)[0] == "request_headers"


async def test_internal_error_is_500_and_stream_survives(monkeypatch):
    async with running_epp(eps(1)) as (epp, ch):

        def boom(*a, **k):
            raise RuntimeError("plugin bug")

        monkeypatch.setattr(epp.scheduler, "schedule", boom)
        out = await run_stream(ch, [request_headers(), request_body(completion())])
        assert out[0].immediate_response.status.code == 500
        assert out[0].immediate_response.body == b"inference error: Internal - internal error"
        monkeypatch.undo()
        out = await run_stream(ch, [request_headers(), request_body(completion())])
        assert kinds(out)[0] == "request_headers"


async def test_buffered_mode_puts_destination_on_the_body_response():
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(ch, [request_headers(mode=BUFFERED), request_body(completion())])
        assert kinds(out) == ["request_headers", "request_body"]
        assert not out[0].request_headers.response.HasField("header_mutation")
        common = out[1].request_body.response
        assert set_headers(common)["x-gateway-destination-endpoint"] == "127.0.0.1:8000"
        assert not common.body_mutation.HasField("body")  # unchanged body is not resent


async def test_absent_protocol_config_and_value_field_headers_are_handled():
    """What NGINX shims send: no protocol_config, header values in `value`, whole body at once."""
    async with running_epp(eps(1)) as (_epp, ch):
        out = await run_stream(
            ch,
            [
                request_headers("/v1/chat/completions", mode=None, raw=False),
                request_body(orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})),
            ],
        )
        assert kinds(out) == ["request_headers", "request_body"]


async def test_query_string_does_not_break_api_detection():
    async with running_epp(eps(1)) as (_epp, ch):
        body = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]})
        out = await run_stream(ch, [request_headers("/v1/chat/completions?api-version=2"), request_body(body)])
        assert kinds(out)[0] == "request_headers"


async def test_inflight_released_on_completion_and_on_abort():
    async with running_epp(eps(1)) as (epp, ch):
        ep = epp.datastore.endpoints()[0]
        conv = Conversation(ch)
        await conv.send(request_headers())
        await conv.send(request_body(completion(prompt="y" * 400)))
        await conv.recv()
        await conv.recv()
        assert ep.inflight.requests == 1 and ep.inflight.prompt_tokens > 0
        conv.call.cancel()  # the client vanishes mid-stream
        import asyncio

        for _ in range(50):
            if ep.inflight.requests == 0:
                break
            await asyncio.sleep(0.02)
        assert ep.inflight.requests == 0 and ep.inflight.prompt_tokens == 0
        await run_stream(
            ch,
            [
                request_headers(),
                request_body(completion()),
                response_headers({":status": "200", "content-type": "application/json"}),
                response_body(b"{}", eos=True),
            ],
        )
        assert ep.inflight.requests == 0

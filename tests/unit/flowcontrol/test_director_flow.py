"""Flow control as the director uses it, over real gRPC: headers in, waiting, release, clean-up."""

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
    run_stream,
    set_headers,
)
from tests.support.inproc import running_epp

DESTINATION = "x-gateway-destination-endpoint"
CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 1}
- type: queue-scorer
saturationDetector: {pluginRef: concurrency-detector}
flowControl:
  defaultRequestTTL: 30s
"""


def body(prompt: str) -> bytes:
    return orjson.dumps({"model": "m1", "prompt": prompt, "max_tokens": 3, "stream": True})


async def test_llmd_header_names_set_priority_and_fairness_and_never_reach_the_server():
    eps = [Endpoint("127.0.0.1:8000", "127.0.0.1", 8000)]
    async with running_epp(eps, CONFIG, static_objectives=(("batch", -5),)) as (epp, ch):
        extra = {"x-llm-d-inference-objective": "batch", "x-llm-d-inference-fairness-id": "team-x"}
        out = await run_stream(ch, [request_headers(extra=extra), request_body(body("hi"))])
        mutation = out[0].request_headers.response.header_mutation
        assert set(extra) <= set(mutation.remove_headers)
        reg = epp.metrics.registry
        assert (
            reg.get_sample_value(
                "inference_extension_flow_control_requests_total",
                {"outcome": "Dispatched", "priority": "-5", "inference_pool": "static"},
            )
            == 1
        )
        assert (
            reg.get_sample_value(
                "inference_extension_flow_control_request_queue_duration_seconds_count",
                {
                    "fairness_id": "team-x",
                    "priority": "-5",
                    "outcome": "Dispatched",
                    "inference_pool": "static",
                    "model_name": "m1",
                    "target_model_name": "m1",
                },
            )
            == 1
        )


async def test_a_queued_request_goes_when_the_one_ahead_finishes_and_a_vanished_one_leaves_nothing():
    eps = [Endpoint("127.0.0.1:8000", "127.0.0.1", 8000)]
    async with running_epp(eps, CONFIG) as (epp, ch):
        first = Conversation(ch, timeout=30)
        await first.send(request_headers())
        await first.send(request_body(body("first")))
        assert set_headers((await first.recv()).request_headers.response)[DESTINATION] == "127.0.0.1:8000"
        await first.recv()
        second = Conversation(ch, timeout=30)
        await second.send(request_headers())
        await second.send(request_body(body("second")))
        gone = Conversation(ch, timeout=30)
        await gone.send(request_headers())
        await gone.send(request_body(body("gone")))
        answer = asyncio.ensure_future(second.recv())
        await asyncio.sleep(0.2)
        assert not answer.done() and epp.flow.queued == 2
        gone.call.cancel()  # the client of the third goes away while it waits
        for _ in range(50):
            if epp.flow.queued == 1:
                break
            await asyncio.sleep(0.02)
        assert epp.flow.queued == 1
        await first.send(response_headers({":status": "200", "content-type": "text/event-stream"}))
        await first.recv()
        await first.send(response_body(b"data: [DONE]\n\n", eos=True))
        routed = await asyncio.wait_for(answer, 5)
        assert set_headers(routed.request_headers.response)[DESTINATION] == "127.0.0.1:8000"
        assert epp.flow.queued == 0 and eps[0].inflight.requests == 1  # only the second, now in flight

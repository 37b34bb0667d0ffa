"""Prometheus names, labels and buckets as the reference exports them (dashboards depend on them)."""

import httpx
import orjson

from epp.datalayer.endpoint import Endpoint
from tests.support.extproc_client import request_body, request_headers, response_body, response_headers, run_stream
from tests.support.inproc import running_epp


async def test_reference_metric_names_labels_and_buckets_on_the_metrics_port():
    async with running_epp([Endpoint(name="a", address="127.0.0.1", port=1)]) as (epp, ch):
        await run_stream(
            ch,
            [
                request_headers(),
                request_body(orjson.dumps({"model": "m", "prompt": "hi"})),
                response_headers({":status": "200", "content-type": "application/json"}),
                response_body(b'{"usage":{"prompt_tokens":3,"completion_tokens":2}}', eos=True),
            ],
        )
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{epp.opts.metrics_port}/metrics")).text
    labels = 'model_name="m",target_model_name="m"'
    for expected in [
        'inference_objective_request_total{model_name="m",priority="0",target_model_name="m"} 1.0',
        f'inference_objective_input_tokens_bucket{{le="32778.0",{labels}}} 1.0',
        f'inference_objective_response_sizes_bucket{{le="32778.0",{labels}}} 1.0',  # upstream typo kept
        f"inference_objective_output_tokens_sum{{{labels}}} 2.0",
        f"inference_objective_request_duration_seconds_count{{{labels}}} 1.0",
        'inference_objective_running_requests{model_name="m"} 0.0',
        "inference_extension_scheduler_e2e_duration_seconds_count 1.0",
        'inference_extension_scheduler_attempts_total{namespace="",pod_name="a",port="1",status="success",target_model_name="m"} 1.0',
        'inference_extension_info{build_ref="epp",commit="0.1.0"} 1.0',
        'epp_endpoint_inflight_requests{endpoint="a"} 0.0',
    ]:
        assert expected in text, expected

"""The prefix index is bounded per endpoint, reported in metrics, and forgets removed endpoints."""

import orjson

from epp.datalayer.endpoint import Endpoint
from tests.support.extproc_client import request_body, request_headers, run_stream
from tests.support.inproc import running_epp

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {lruCapacityPerServer: 10, autoTune: false}
- type: estimated-ttft-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: estimated-ttft-scorer}]
"""


def sample(epp, name):
    from prometheus_client import generate_latest

    generate_latest(epp.metrics.registry)  # collection refreshes the index gauges
    return epp.metrics.registry.get_sample_value(name)


async def test_index_size_is_bounded_reported_and_cleared_on_removal():
    eps = [Endpoint(name="a", address="127.0.0.1", port=1)]
    async with running_epp(eps, CONFIG) as (epp, ch):
        prompt = "".join(f"word{i} " for i in range(400))  # ~2,800 chars = 43 blocks of 64
        await run_stream(ch, [request_headers(), request_body(orjson.dumps({"model": "m", "prompt": prompt}))])
        assert sample(epp, "inference_extension_prefix_indexer_size") == 10  # capped at lruCapacityPerServer
        assert sample(epp, "inference_extension_prefix_indexer_memory_bytes") > 0
        epp.datastore.remove("a")
        assert sample(epp, "inference_extension_prefix_indexer_size") == 0

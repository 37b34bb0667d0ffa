"""`estimated-ttft-scorer`'s cost loop is the formula of its docstring, endpoint by endpoint.

The loop is written for speed (it is most of a pick in a large pool); `reference_cost` below is
the formula written plainly, as the scorer computed it before, and the two must agree to the
last bit, or picks (ties included) would change.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.scheduling.plugins.ttft import EstimatedTtftParams, endpoint_costs, lora_cost

P = EstimatedTtftParams()


def reference_cost(e: Endpoint, uncached: int, p: EstimatedTtftParams, lora: str, uncached_weight: float) -> float:
    m = e.metrics
    running = m.running_requests_size
    waiting = m.waiting_queue_size
    inflight = e.inflight.requests
    if inflight > running + waiting:
        running = inflight - waiting
    waiting = max(0, waiting - e.inflight.prefill_requests)
    cost = (
        e.inflight.prefill_tokens
        + e.inflight.held_tokens
        + uncached_weight * uncached
        + p.running_tokens * running
        + p.waiting_tokens * waiting
    )
    if lora:
        cost += lora_cost(e, lora, p)
    kv = m.kv_cache_usage_percent
    if kv > p.kv_pressure_threshold:
        cost += p.kv_pressure_tokens * (kv - p.kv_pressure_threshold) / (1 - p.kv_pressure_threshold + 1e-9)
    return cost


small = st.integers(min_value=0, max_value=300)
adapters = st.frozensets(st.sampled_from(["l1", "l2", "l3"]), max_size=3)
endpoint = st.builds(
    lambda i, w, r, kv, act, wait, maxl, req, pre_t, pre_r, held: _endpoint(
        i, w, r, kv, act, wait, maxl, req, pre_t, pre_r, held
    ),
    st.integers(0, 10**6),
    small,
    small,
    st.floats(min_value=0.0, max_value=1.0),
    adapters,
    adapters,
    st.integers(0, 4),
    small,
    st.integers(0, 50_000),
    small,
    st.integers(0, 50_000),
)


def _endpoint(i, waiting, running, kv, active, waiting_models, max_lora, requests, pre_tokens, pre_requests, held):
    e = Endpoint(f"10.0.0.{i}:8000", "10.0.0.1", 8000)
    e.metrics = EndpointMetrics(
        waiting_queue_size=waiting,
        running_requests_size=running,
        kv_cache_usage_percent=kv,
        active_models=active,
        waiting_models=waiting_models,
        max_active_models=max_lora,
    )
    e.inflight = dataclasses.replace(
        e.inflight, requests=requests, prefill_tokens=pre_tokens, prefill_requests=pre_requests, held_tokens=held
    )
    return e


@given(
    st.lists(endpoint, min_size=1, max_size=12),
    st.integers(0, 20_000),
    st.integers(1, 64),
    st.sampled_from(["", "l1", "l2"]),
    st.sampled_from([1.0, 8.0, 0.5]),
    st.data(),
)
def test_the_cost_loop_is_the_formula_endpoint_by_endpoint(endpoints, tokens, block, lora, weight, data):
    matches = {e.name: data.draw(st.integers(0, 400)) for e in endpoints if data.draw(st.booleans())}
    got = endpoint_costs(endpoints, tokens, matches, block, P, lora, weight)
    want = [reference_cost(e, max(0, tokens - matches.get(e.name, 0) * block), P, lora, weight) for e in endpoints]
    assert got == want

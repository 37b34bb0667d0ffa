"""The TTFT floor is a true lower bound: no request in virtual time beats it, and an idle server meets it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.bench.capacity import fleet_capacity
from epp.bench.des import token_ids
from epp.bench.floor import decode_floor, request_floors, throughput_ceiling, ttft_p90_floor
from epp.bench.ladder import stage_workload
from epp.bench.report import _floor
from epp.bench.workloads import MODEL, BenchRequest, FleetSpec, Workload, make, poisson_arrivals
from epp.sim.costmodel import CostModel
from epp.sim.engine import Engine, EngineConfig
from epp.sim.vtime import RequestRecord, TraceItem, VirtualFleet

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def replay(w: Workload, load: float, seed: int) -> list[float]:
    """TTFT per request (list order) on a round-robin fleet in virtual time."""
    return [r.ttft for r in run(w, poisson_arrivals(len(w.requests), load * fleet_capacity(w), seed))]


def run(w: Workload, arrivals: list[float], replica_of=lambda i, r: i) -> list[RequestRecord]:
    """The requests' records (list order) in virtual time, request i on replica replica_of(i, request)."""
    ids = [token_ids(r) for r in w.requests]
    lora_ids = {a: k + 1 for k, a in enumerate(w.fleet.lora_modules)}
    cfg = EngineConfig(
        num_gpu_blocks=w.fleet.num_gpu_blocks,
        max_model_len=min(131_072, w.fleet.num_gpu_blocks * 16),
        max_loras=w.fleet.max_loras,
    )
    engines = [Engine(cfg, CostModel(), lora_ids=lora_ids) for _ in range(w.fleet.replicas)]
    trace = [
        TraceItem(
            arrivals[i],
            ids[i],
            r.max_tokens,
            lora=None if r.model == MODEL else r.model,
            request_id=str(i),
            replica=replica_of(i, r) % len(engines),
        )
        for i, r in enumerate(w.requests)
    ]
    by_id = {int(rec.request_id): rec for rec in VirtualFleet(engines).run_trace(trace)}
    return [by_id[i] for i in range(len(w.requests))]


@pytest.mark.parametrize(
    "name,load", [("shared-prefix", 0.9), ("hot-prefix", 0.6), ("multi-turn", 0.6), ("multi-lora", 0.3)]
)
def test_no_request_beats_its_floor_and_the_first_one_meets_it(name, load):
    w = make(name, 1002)
    floors = request_floors(w, [token_ids(r) for r in w.requests])
    ttfts = replay(w, load, 1002)
    assert all(t >= f - 1e-9 for t, f in zip(ttfts, floors, strict=True))
    if name != "multi-lora":  # the first adapter request also pays the adapter load, which the floor leaves out
        assert ttfts[0] == pytest.approx(floors[0])  # an idle server gives exactly the floor


def test_shared_prefix_floor_is_a_cold_prompt_on_an_idle_server():
    w = make("shared-prefix", 1001)
    ids = [token_ids(r) for r in w.requests]
    cost = CostModel()
    # One request in five starts a group: more than a tenth of the requests prefill their whole prompt.
    assert ttft_p90_floor(w, ids) == pytest.approx(cost.frontend_latency + cost.prefill_seconds(len(ids[0])))
    assert 0.53 < ttft_p90_floor(w, ids) < 0.55


def test_only_earlier_requests_and_whole_blocks_count_and_adapters_do_not_share():
    words = " ".join(f"w{i}" for i in range(100))
    same = BenchRequest("completions", 4, prompt=words)
    other_model = BenchRequest("completions", 4, model="lora-1", prompt=words)
    w = Workload("t", [same, same, other_model], FleetSpec())
    ids = [token_ids(r) for r in w.requests]
    n = len(ids[0])  # 101 with BOS: 6 full blocks
    cost = CostModel()
    floors = request_floors(w, ids)
    assert floors[0] == pytest.approx(cost.frontend_latency + cost.prefill_seconds(n))
    cached = (n - 1) // 16 * 16
    assert floors[1] == pytest.approx(cost.frontend_latency + cost.prefill_seconds(n - cached, context_before=cached))
    assert floors[2] == pytest.approx(cost.frontend_latency + cost.prefill_seconds(n, lora=True))


def test_no_committed_result_is_below_its_floor():
    for name in ("live.json", "des.json", "live-repeat.json", "live-multi-lora.json"):
        rows = json.loads((RESULTS / name).read_text())["rows"]
        for r in rows:
            if r["ttft_p90"] is not None:
                assert r["ttft_p90"] >= _floor(r["workload"], r["seed"]) - 1e-3, (name, r["router"], r["load"])


def test_a_lone_request_finishes_exactly_at_its_floor_plus_its_decode_floor():
    for model in (MODEL, "lora-1"):
        req = BenchRequest("completions", 40, model=model, prompt=" ".join(f"w{i}" for i in range(300)))
        w = Workload("t", [req], FleetSpec(lora_modules=("lora-1",)))
        (rec,) = run(w, [0.0])
        n = len(token_ids(req))
        # The adapter's first load is not in the floor (as above); everything after the first token is.
        assert rec.finish_time - rec.first_token_time == pytest.approx(decode_floor(n, 40, model != MODEL))


@pytest.mark.parametrize("assign", ["round-robin", "by-prefix-group"])
def test_no_request_finishes_before_its_bound_and_no_stage_beats_the_throughput_ceiling(assign):
    # A ladder stage past saturation on two assignments: cache-blind, and each prompt group on one server.
    w = stage_workload("shared-prefix", 1, 3, 300)
    ids = [token_ids(r) for r in w.requests]
    floors = request_floors(w, ids)
    arrivals = poisson_arrivals(len(ids), 1.1 * fleet_capacity(w), 3)
    recs = run(w, arrivals, (lambda i, r: i) if assign == "round-robin" else (lambda i, r: r.group))
    for rec, req, n, f, a in zip(recs, w.requests, ids, floors, arrivals, strict=True):
        assert rec.finish_time >= a + f + decode_floor(len(n), req.max_tokens, False) - 1e-9
    measured = sum(r.max_tokens for r in w.requests) / (max(r.finish_time for r in recs) - arrivals[0])
    ceiling = throughput_ceiling(w.requests, ids, floors, arrivals)
    assert measured <= ceiling
    # The bound is not vacuous: the cache-aware assignment comes within a third of it.
    if assign == "by-prefix-group":
        assert measured > 0.66 * ceiling

"""The harness measures what happened: TTFT against a simulator whose TTFT is known, and failures."""

from __future__ import annotations

import asyncio
import random
import statistics
from pathlib import Path

import pytest

from epp.bench.loadgen import run_open_loop
from epp.bench.simfleet import start_fleet
from epp.bench.summary import Outcome, summarize
from epp.bench.workloads import MODEL, BenchRequest, FleetSpec, Words
from epp.sim.costmodel import CostModel
from epp.stack.processes import free_port

TIME_SCALE = 2.0  # slower than real time: event-loop jitter on a busy machine shrinks in simulated seconds


def _prompt(words: int, seed: int = 0) -> str:
    return Words(random.Random(seed)).text(words)  # letters only: one token per word


def test_ttft_and_itl_match_the_cost_model(tmp_path: Path) -> None:
    fleet = start_fleet(FleetSpec(replicas=1, num_gpu_blocks=4096), TIME_SCALE, tmp_path)
    try:
        # Distinct prompts (no prefix-cache hits), spaced so each finds the engine idle.
        reqs = [BenchRequest("completions", 8, prompt=_prompt(2047, seed=k)) for k in range(4)]
        samples = asyncio.run(run_open_loop(fleet.urls[0], reqs, [k * 1.0 for k in range(4)], deadline=20))
    finally:
        fleet.stop()
    assert all(s.ok for s in samples), [s.error for s in samples]
    n = samples[0].prompt_tokens
    assert n == 2048  # BOS + one token per word
    cost = CostModel()
    expected_ttft = cost.frontend_latency + cost.prefill_seconds(n)  # idle engine: frontend hop + prefill step
    ttft = statistics.median(s.ttft for s in samples) / TIME_SCALE
    assert expected_ttft * 0.95 - 0.005 <= ttft <= expected_ttft * 1.10 + 0.015, (ttft, expected_ttft)
    itl = statistics.median(g for s in samples for g in s.itls) / TIME_SCALE
    expected_itl = cost.decode_seconds(1, n + 4)
    assert expected_itl * 0.8 <= itl <= expected_itl * 1.5, (itl, expected_itl)
    assert all(s.output_tokens == 8 and s.pod == "sim-0" for s in samples)


def _outcomes(samples):
    return [Outcome(s.ok, s.start, s.ttft, s.e2e, s.itls, s.output_tokens, s.pod) for s in samples]


def test_failed_requests_lower_the_success_rate(tmp_path: Path) -> None:
    fleet = start_fleet(FleetSpec(replicas=1, num_gpu_blocks=1024, extra=("--fail-rate", "0.5")), 0.2, tmp_path)
    try:
        reqs = [BenchRequest("completions", 4, prompt=_prompt(20)) for _ in range(30)]
        samples = asyncio.run(run_open_loop(fleet.urls[0], reqs, [k * 0.02 for k in range(30)], deadline=20))
    finally:
        fleet.stop()
    row = summarize(
        _outcomes(samples),
        router="failing",
        workload="w",
        qps=50,
        load=None,
        servers=["sim-0"],
        prefix_hits=None,
        prefix_queries=None,
    )
    failed = sum(1 for s in samples if s.status == 500)
    assert 0 < failed < 30
    assert row["success_rate"] == pytest.approx((30 - failed) / 30, abs=1e-4)
    assert row["success_rate"] < 1


def test_unreachable_router_is_all_failures() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    reqs = [BenchRequest("completions", 4, model=MODEL, prompt="hello")] * 3
    samples = asyncio.run(run_open_loop(url, reqs, [0.0, 0.01, 0.02], deadline=5))
    row = summarize(
        _outcomes(samples),
        router="down",
        workload="w",
        qps=100,
        load=None,
        servers=[],
        prefix_hits=None,
        prefix_queries=None,
    )
    assert row["success_rate"] == 0.0 and row["ttft_p90"] is None
    assert all(s.error for s in samples)


def test_deadline_cancels_and_counts_unfinished_requests(tmp_path: Path) -> None:
    fleet = start_fleet(FleetSpec(replicas=1, num_gpu_blocks=1024), 1.0, tmp_path)
    try:
        # 400 output tokens take ~4 s at ~10 ms per token: far past a 1 s deadline.
        reqs = [BenchRequest("completions", 400, prompt=_prompt(50))]
        samples = asyncio.run(run_open_loop(fleet.urls[0], reqs, [0.0], deadline=1.0))
    finally:
        fleet.stop()
    assert not samples[0].ok and samples[0].error == "timeout"

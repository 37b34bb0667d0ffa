"""The canonical ladder: one prompt set across stages, a floor that carries over and still bounds
every request from below, and a report whose verdicts follow the numbers."""

from __future__ import annotations

import pytest

from epp.bench import ladder, ladderreport
from epp.bench.des import token_ids
from epp.bench.floor import FloorState, request_floors
from epp.bench.workloads import Workload
from tests.bench.test_floor import replay


def _systems(w: Workload) -> set[str]:
    return {r.prompt.split("\n\n")[0] for r in w.requests}


def test_stages_share_the_prompt_set_and_differ_in_questions():
    a = ladder.stage_workload("cache-pressure", 1, 1, 300)
    b = ladder.stage_workload("cache-pressure", 1, 2, 300)
    other_seed = ladder.stage_workload("cache-pressure", 2, 1, 300)
    assert _systems(a) & _systems(b) and not _systems(a) & _systems(other_seed)
    assert len(_systems(a) | _systems(b)) <= 96
    assert not {r.prompt for r in a.requests} & {r.prompt for r in b.requests}
    outs = [r.max_tokens for r in a.requests + b.requests]
    assert min(outs) >= 64 and max(outs) <= 256 and len(set(outs)) > 50
    assert a.params["resident_share"] == pytest.approx(0.732, abs=0.001)
    assert ladder.stage_workload("shared-prefix", 1, 1, 10).params["resident_share"] == pytest.approx(0.183, abs=0.001)


def test_floor_carries_over_stages_and_equals_the_floor_of_the_joined_sequence():
    warm = ladder.stage_workload("shared-prefix", 1, 0, 60)
    stage = ladder.stage_workload("shared-prefix", 1, 1, 40)
    state = FloorState()
    state.advance(warm.requests, [token_ids(r) for r in warm.requests])
    carried = state.advance(stage.requests, [token_ids(r) for r in stage.requests])
    joined = Workload("j", warm.requests + stage.requests, warm.fleet)
    assert carried == request_floors(joined, [token_ids(r) for r in joined.requests])[60:]
    cold = request_floors(stage, [token_ids(r) for r in stage.requests])
    # A warmed system prompt costs only its question: the stage's floor p90 drops well below cold.
    assert sorted(carried)[35] < 0.5 * sorted(cold)[35]


def test_no_request_of_a_warm_stage_beats_its_carried_floor_in_virtual_time():
    warm = ladder.stage_workload("hot-prefix", 3, 0, 40)
    stage = ladder.stage_workload("hot-prefix", 3, 1, 40)
    joined = Workload("hot-prefix", warm.requests + stage.requests, warm.fleet)
    floors = request_floors(joined, [token_ids(r) for r in joined.requests])
    ttfts = replay(joined, 0.5, 3)
    assert all(t >= f - 1e-9 for t, f in zip(ttfts, floors, strict=True))
    assert min(t - f for t, f in zip(ttfts, floors, strict=True)) < 0.005  # and some request meets it


def _row(
    router: str,
    stage: str,
    load: float,
    seed: int,
    p90: float,
    tput: float,
    shape: str = "shared-prefix",
    floor: float = 0.1,
    ok: float = 1.0,
) -> dict:
    return {
        "router": router,
        "stage": stage,
        "load": load,
        "seed": seed,
        "ttft_p90": p90,
        "floor_p90": floor,
        "excess_p90": round(p90 - floor, 4),
        "output_tokens_per_s": tput,
        "success_rate": ok,
        "prefix_cache_hit_rate": 0.8,
        "shape": shape,
        "resident_share": 0.183,
        "capacity": 31.0,
    }


def test_report_compares_excess_over_the_floor_not_raw_p90(tmp_path):
    rows = []
    for seed in (1, 2):
        rows += [
            _row("epp", "s1", 0.5, seed, 0.15, 1000),
            _row("epp", "s2", 1.1, seed, 0.20, 2300),
            _row("smg-cache_aware", "s1", 0.5, seed, 0.30, 1000),
            _row("smg-cache_aware", "s2", 1.1, seed, 0.40, 2000),
            _row("vllm-router-cache_aware", "s1", 0.5, seed, 0.25, 990),
            _row("vllm-router-cache_aware", "s2", 1.1, seed, 0.5, 1900),
            _row("envoy-rr", "s1", 0.5, seed, 1.0, 900),
            _row("envoy-rr", "s2", 1.1, seed, 3.1, 1000),
        ]
    summ = ladderreport.stage_summary(rows, "shared-prefix")
    # Raw p90 0.15 vs 0.25 would be 0.6x; above the floor it is 0.05 / 0.15 = 0.33x.
    assert summ[0]["best_peer"] == "vllm-router-cache_aware"
    assert summ[0]["vs_best_peer"] == pytest.approx(1 / 3)
    assert summ[1]["vs_rr"] == pytest.approx(0.1 / 3.0)
    verdicts = "\n".join(ladderreport.targets(rows))
    assert "≤ 0.5x best peer at every stage ≥ 0.5 | met" in verdicts
    assert "≥ 1.1x best peer | met | load 1.10: 1.15x smg-cache_aware" in verdicts
    assert "≥ 2x round-robin | met" in verdicts
    data = {"meta": {"date": "d", "commit": "c", "peer_versions": {"smg": "smg 1.13.0"}}, "rows": rows}
    md = ladderreport.render([data], tmp_path)
    assert md.read_text() == ladderreport.render([data], tmp_path).read_text()
    assert (tmp_path / "ladder-shared-prefix.png").stat().st_size > 10_000
    rows[1] = _row("epp", "s2", 1.1, 1, 0.40, 2300)  # seed 1 at 1.1: excess 0.30, the mean 0.20 vs 0.30
    assert "≤ 0.5x best peer at every stage ≥ 0.5 | **missed**" in "\n".join(ladderreport.targets(rows))


@pytest.mark.parametrize(
    "directory,names",
    [
        ("", ("ladder.json",)),  # the canonical run
        ("ladder-2026-12-02", ("ladder.json", "ladder-peers.json", "ladder-more.json")),  # with more peers and shapes
        ("ladder-saturation", ("ladder-seed1.json", "ladder-seed2.json")),  # one stage at 1.6 of capacity
    ],
)
def test_committed_ladder_report_is_the_render_of_the_committed_results(tmp_path, directory, names):
    import json
    from pathlib import Path

    results = Path(__file__).resolve().parents[2] / "bench" / "results" / directory
    md = ladderreport.render([json.loads((results / n).read_text()) for n in names], tmp_path)
    assert md.read_text() == (results / "ladder.md").read_text()

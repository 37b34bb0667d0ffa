"""Virtual time reproduces the live ranking of round-robin vs the EPP's default on shared-prefix.

Live side: the committed live results (bench/results/live.json, `make bench`). Virtual side: the
same workload, seed, load points and EPP config, replayed by `epp-bench des` in a few seconds.
Tolerance (stated in docs/bench.md): at every load point where live separates the two routers by
more than 20 % in TTFT p90, virtual time ranks them the same way (TTFT p90 and output throughput
at the highest load). While the scheduler code is the code that ran live (same
`scheduler_fingerprint`), the EPP/round-robin ratio of TTFT p90 must also agree within a factor of
1.5 and the throughput ratio at the highest load within 20 %; after a scheduler change only the
ranking is held until `make bench` refreshes the live results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from epp.bench.capacity import fleet_capacity
from epp.bench.des import DesRouter, run_point
from epp.bench.fingerprint import scheduler_fingerprint
from epp.bench.live import LiveOptions, workload_at

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
TTFT_RATIO_FACTOR = 1.5
TPUT_RATIO_TOLERANCE = 0.20
SEPARATED = 1.2


def _live() -> dict:
    """The live results measured with this scheduler code if there are any, else the main run."""
    runs = [json.loads(p.read_text()) for p in (RESULTS / "live.json", RESULTS / "live-repeat.json") if p.exists()]
    if not runs:
        pytest.skip("no committed live results")
    current = scheduler_fingerprint()
    return next((r for r in runs if r["meta"].get("scheduler_fingerprint") == current), runs[0])


@pytest.fixture(scope="module")
def same_code() -> bool:
    return _live()["meta"].get("scheduler_fingerprint") == scheduler_fingerprint()


@pytest.fixture(scope="module")
def pairs() -> list[tuple[dict, dict, dict, dict]]:
    live = _live()
    rows = [r for r in live["rows"] if r["workload"] == "shared-prefix"]
    by = {(r["router"], r["load"]): r for r in rows}
    epp_config = (live["meta"].get("epp_configs") or {}).get("epp")
    out = []
    for (router, load), epp_live in sorted(by.items()):
        if router != "epp" or ("envoy-rr", load) not in by:
            continue
        rr_live = by[("envoy-rr", load)]
        ts, seed = epp_live["time_scale"], epp_live["seed"]
        opts = LiveOptions(loads=[load])
        w = workload_at("shared-prefix", seed, opts)
        # The exact rate live used (the JSON rounds it; arrivals are seeded by the rate).
        qps = load * fleet_capacity(workload_at("shared-prefix", seed - seed % 1000, opts))
        assert qps == pytest.approx(epp_live["qps"], abs=1e-3)
        kw = dict(load=load, scrape_interval=0.05 / ts)
        epp_des = run_point(w, DesRouter("epp", epp_config), qps, seed, **kw)
        rr_des = run_point(w, DesRouter("envoy-rr"), qps, seed, **kw)
        out.append((epp_live, rr_live, epp_des, rr_des))
    assert out, "live results have no shared-prefix points for both epp and envoy-rr"
    return out


def test_same_ranking_and_ttft_ratio_within_tolerance(pairs, same_code) -> None:
    compared = 0
    for epp_live, rr_live, epp_des, rr_des in pairs:
        live_ratio = epp_live["ttft_p90"] / rr_live["ttft_p90"]
        des_ratio = epp_des["ttft_p90"] / rr_des["ttft_p90"]
        if max(live_ratio, 1 / live_ratio) < SEPARATED:
            continue  # live cannot tell them apart at this load: no ranking to reproduce
        compared += 1
        assert (live_ratio < 1) == (des_ratio < 1), (epp_live["load"], live_ratio, des_ratio)
        if same_code:
            assert abs(math.log(des_ratio / live_ratio)) <= math.log(TTFT_RATIO_FACTOR), (
                epp_live["load"],
                live_ratio,
                des_ratio,
            )
    assert compared >= 1


def test_throughput_ratio_at_the_top_load(pairs, same_code) -> None:
    epp_live, rr_live, epp_des, rr_des = max(pairs, key=lambda p: p[0]["load"])
    live_ratio = epp_live["output_tokens_per_s"] / rr_live["output_tokens_per_s"]
    des_ratio = epp_des["output_tokens_per_s"] / rr_des["output_tokens_per_s"]
    assert (live_ratio > 1) == (des_ratio > 1)
    if same_code:
        assert abs(des_ratio / live_ratio - 1) <= TPUT_RATIO_TOLERANCE, (live_ratio, des_ratio)


def test_des_is_deterministic() -> None:
    w = workload_at("shared-prefix", 1000, LiveOptions(loads=[0.6]))
    a = run_point(w, DesRouter("epp"), 26.0, 1000)
    b = run_point(w, DesRouter("epp"), 26.0, 1000)
    assert a == b

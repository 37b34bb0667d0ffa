"""epp-bench flowcontrol: paired flows, config variants the EPP accepts, per-flow results, the report."""

from __future__ import annotations

from pathlib import Path

from epp.bench.flowbench import CONFIGS, FlowBenchOptions, Run, _metric_sums, _start, run_flow_mix
from epp.bench.flowreport import render
from epp.bench.simfleet import start_fleet
from epp.bench.tenants import FAIRNESS_HEADER, OBJECTIVE_HEADER, Flow, mix
from epp.bench.workloads import FleetSpec
from epp.scheduling.config import load_config

CRIT = Flow("critical", 0.35, objective="critical")
SHED = Flow("sheddable", 1.15, objective="sheddable")


def test_a_flow_is_the_same_requests_alone_and_beside_a_flood() -> None:
    alone = mix((CRIT,), 100.0, 3.0, seed=1, text_seed="alone")
    flooded = mix((CRIT, SHED), 100.0, 3.0, seed=1, text_seed="flooded")
    crit = [
        (a, r) for a, r, f in zip(flooded.arrivals, flooded.requests, flooded.flows, strict=True) if f == "critical"
    ]
    assert [a for a, _ in crit] == alone.arrivals
    assert [r.max_tokens for _, r in crit] == [r.max_tokens for r in alone.requests]
    assert [len(r.prompt.split()) for _, r in crit] == [len(r.prompt.split()) for r in alone.requests]
    # ... but not the same text: the second run cannot hit the first one's prefix cache.
    assert all(r1.prompt != r2.prompt for (_, r1), r2 in zip(crit, alone.requests, strict=True))
    assert flooded.arrivals == sorted(flooded.arrivals) and flooded.arrivals[-1] < 3.0
    n_shed = flooded.flows.count("sheddable")
    assert 0.8 * 345 < n_shed < 1.2 * 345  # 1.15 x 100 req/s for 3 s
    assert {r.headers for r, f in zip(flooded.requests, flooded.flows, strict=True) if f == "sheddable"} == {
        ((OBJECTIVE_HEADER, "sheddable"),)
    }
    tenant = mix((Flow("tenant-b", 0.1, fairness_id="tenant-b"),), 100.0, 1.0, seed=1)
    assert tenant.requests and all(r.headers == ((FAIRNESS_HEADER, "tenant-b"),) for r in tenant.requests)
    capped = mix((SHED,), 100.0, 3.0, seed=1, max_per_flow=50)
    assert len(capped.requests) == 50


def test_every_config_variant_is_one_the_epp_accepts() -> None:
    for name, text in CONFIGS.items():
        cfg = load_config(text, name)
        if name in ("epp-default",):  # whatever the built-in default is
            continue
        flow_control = name in ("flowcontrol", "default-fc", "default-fc-hb50") or name.startswith("fc-")
        assert ("flowControl" in cfg.feature_gates) == flow_control, name
        assert cfg.flow.enabled == flow_control, name
        if flow_control:
            assert cfg.spec.flow_control is not None


def _flow(sent: int, ok: int, p90: float, tok: float, **kw) -> dict:
    return {
        "sent": sent,
        "ok": ok,
        "http_429": kw.get("e429", 0),
        "http_503": 0,
        "other_errors": 0,
        "errors": {},
        "ttft_p50": p90 / 2,
        "ttft_p90": p90,
        "ttft_p99": p90 * 1.5,
        "e2e_p90": 1.0,
        "output_tokens": 0,
        "output_tokens_per_s": tok,
        "completed_per_s": 0.0,
    }


def test_report_headlines_compare_each_variant_with_its_own_baseline() -> None:
    rows = []
    for variant, flooded_p90, shed429 in (("epp-default", 0.4, 30), ("flowcontrol", 0.22, 0)):
        rows.append(
            {
                "scenario": "priority",
                "variant": variant,
                "run": "alone",
                "seed": 1,
                "wall_s": 1,
                "flows": {"critical": _flow(100, 100, 0.2, 500.0)},
                "fleet_output_tokens_per_s": 500.0,
            }
        )
        rows.append(
            {
                "scenario": "priority",
                "variant": variant,
                "run": "flooded",
                "seed": 1,
                "wall_s": 1,
                "flows": {
                    "critical": _flow(100, 100, flooded_p90, 500.0),
                    "sheddable": _flow(300, 300 - shed429, 0.9, 1500.0, e429=shed429),
                },
                "fleet_output_tokens_per_s": 2000.0,
            }
        )
    for variant, tput in (("fc-global-strict", 2000.0), ("fc-round-robin", 1800.0)):
        rows.append(
            {
                "scenario": "fairness",
                "variant": variant,
                "run": "alone",
                "seed": 1,
                "wall_s": 1,
                "flows": {"tenant-b": _flow(20, 20, 0.2, 100.0)},
                "fleet_output_tokens_per_s": 100.0,
            }
        )
        rows.append(
            {
                "scenario": "fairness",
                "variant": variant,
                "run": "mixed",
                "seed": 1,
                "wall_s": 1,
                "flows": {"tenant-a": _flow(200, 200, 0.5, 1700.0), "tenant-b": _flow(20, 20, 0.25, 100.0)},
                "fleet_output_tokens_per_s": tput,
            }
        )
    meta = {
        "scenarios": {
            "priority": {
                "variants": ["epp-default", "flowcontrol"],
                "runs": [
                    {
                        "label": "flooded",
                        "flows": [{"name": "critical", "load": 0.35}, {"name": "sheddable", "load": 1.15}],
                    }
                ],
            },
            "fairness": {
                "variants": ["fc-global-strict", "fc-round-robin"],
                "runs": [
                    {
                        "label": "mixed",
                        "flows": [{"name": "tenant-a", "load": 1.18}, {"name": "tenant-b", "load": 0.12}],
                    }
                ],
            },
        },
        "fairness_baseline": "fc-global-strict",
        "configs": {"flowcontrol": "kind: EndpointPickerConfig\n"},
    }
    rows[3]["time_scale"] = 2.0
    rows[3]["epp_flow_control_metrics"] = {
        "dispatches_total": 40.0,
        "requests_total{outcome=Dispatched,priority=-1}": 300.0,
        "request_queue_duration_seconds_sum{fairness_id=default-flow,outcome=Dispatched,priority=-1}": 120.0,
        "request_queue_duration_seconds_count{fairness_id=default-flow,outcome=Dispatched,priority=-1}": 300.0,
    }
    md = render({"meta": meta, "rows": rows})
    assert md == render({"meta": meta, "rows": rows})
    # 120 wall s over 300 requests at time scale 2: 0.2 simulated s each.
    assert "| priority | flowcontrol | flooded | 40 | -1: Dispatched 300 | default-flow/-1/Dispatched: 0.200 |" in md
    assert "| priority | epp-default | flooded |" not in md.split("## Was flow control engaged?")[1]
    assert "| epp-default | 1 | 0.200 | 0.400 | 2.00 | **no** | 100/100 | 300 | 270 | 30 |" in md
    assert "| flowcontrol | 1 | 0.200 | 0.220 | 1.10 | yes | 100/100 | 300 | 300 | 0 |" in md
    assert "| fc-global-strict | 1 | 0.200 | 0.250 | 1.25 | yes | 20/20 | 2000.0 | 1.000 | yes |" in md
    assert "| fc-round-robin | 1 | 0.200 | 0.250 | 1.25 | yes | 20/20 | 1800.0 | 0.900 | **no** |" in md
    assert "<code>flowcontrol</code>" in md  # the config text each variant ran with


def _qrow(scenario: str, variant: str, load: float, p90: float, tok: float, **metrics: float) -> dict:
    return {
        "scenario": scenario,
        "workload": "sharegpt-like",
        "load": load,
        "variant": variant,
        "seed": 1,
        "success_rate": 1.0,
        "ttft_p50": p90 / 2,
        "ttft_p90": p90,
        "ttft_p99": p90 * 2,
        "e2e_p90": 3.0,
        "output_tokens_per_s": tok,
        "wall_s": 30,
        "time_scale": 2.0,
        "epp_flow_control_metrics": dict(metrics),
    }


def test_each_queueing_scenario_pairs_flow_control_with_the_same_point_without_it() -> None:
    waited = {
        "dispatches_total": 600.0,
        "request_queue_duration_seconds_sum{fairness_id=default-flow,outcome=Dispatched,priority=0}": 800.0,
        "request_queue_duration_seconds_count{fairness_id=default-flow,outcome=Dispatched,priority=0}": 1000.0,
    }
    rows = [
        _qrow("queueing", "default-nofc", 1.2, 0.40, 2400.0),
        _qrow("queueing", "default-fc", 1.2, 0.42, 2376.0),
        _qrow("queueing-bounded", "default-nofc", 1.2, 2.0, 2800.0),
        _qrow("queueing-bounded", "default-fc", 1.2, 1.6, 2772.0, **waited),
        _qrow("queueing-bounded", "default-fc", 0.9, 0.2, 2000.0),  # no baseline at 0.9: not paired
    ]
    desc = {"variants": ["default-nofc", "default-fc"], "workloads": ["sharegpt-like"], "loads": [0.9, 1.2]}
    meta = {
        "scenarios": {
            "queueing": {**desc, "workload_params": {}},
            "queueing-bounded": {**desc, "workload_params": {}, "server_args": ["--max-num-seqs", "16"]},
        },
        "scenario_info": {
            "queueing/1": {"sharegpt-like": {"capacity": 96.0, "time_scale": 2.9, "requests_per_point": 360}},
            "queueing-bounded/1": {"sharegpt-like": {"capacity": 94.6, "time_scale": 2.8, "requests_per_point": 1000}},
        },
    }
    md = render({"meta": meta, "rows": rows})
    plain, bounded = md.split("## Queueing where a server queue exists")
    assert "| sharegpt-like | 1.2 | 1 | default-fc | 0.400 / 0.420 | 1.05 | 0.800 / 0.840 | 1.05 |" in plain
    # 800 wall s over 1,000 requests at time scale 2: 0.4 simulated s each in the EPP.
    assert (
        "| sharegpt-like | 1.2 | 1 | default-fc | 2.000 / 1.600 | 0.80 | 4.000 / 3.200 | 0.80 | "
        "2800.0 / 2772.0 | 0.990 | 600 | 0.400 |"
    ) in bounded
    assert "epp-sim with `--max-num-seqs 16`" in bounded and "1000 requests per point" in bounded
    assert (
        "| queueing-bounded | default-fc | sharegpt-like 1.2 seed 1 | 600 | – | default-flow/0/Dispatched: 0.400 |"
        in md
    )
    assert "| 0.9 | 1 | default-fc |" not in md  # a point without its baseline is not paired
    assert "| sharegpt-like | 0.9 | default-fc | 1 |" in bounded  # ...but listed


def test_flow_control_counters_are_read_by_outcome_and_priority() -> None:
    page = "\n".join(
        [
            "# TYPE inference_extension_flow_control_requests_total counter",
            'inference_extension_flow_control_requests_total{outcome="Dispatched",priority="100",inference_pool=""} 5.0',
            'inference_extension_flow_control_requests_created{outcome="Dispatched",priority="100"} 1.7e9',
            'llm_d_epp_flow_control_requests_total{outcome="Dispatched",priority="100",inference_pool=""} 5.0',
            "# TYPE inference_extension_flow_control_queue_size gauge",
            'inference_extension_flow_control_queue_size{fairness_id="a",priority="0"} 3.0',
            'inference_extension_flow_control_request_queue_duration_seconds_bucket{le="1",priority="0"} 2.0',
            "epp_flow_control_dispatches_total 7.0",
        ]
    )
    assert _metric_sums(page) == {"requests_total{outcome=Dispatched,priority=100}": 5.0, "dispatches_total": 7.0}


def test_flows_reach_the_epp_under_their_objectives(tmp_path: Path) -> None:
    """Live: two flows through Envoy + the EPP (flow control on); results are kept apart per flow and the
    EPP counted each flow's requests under its objective's priority."""
    opts = FlowBenchOptions(duration=1.0, replicas=2, drain_s=20.0)
    fleet = start_fleet(FleetSpec(2), 1.0, tmp_path)
    try:
        router = _start("flowcontrol", CONFIGS["flowcontrol"], fleet, tmp_path)
        try:
            run = Run(
                "flooded", (Flow("critical", 0.2, objective="critical"), Flow("sheddable", 0.2, objective="sheddable"))
            )
            row = run_flow_mix(run, "priority", "flowcontrol", router, fleet, 25.0, 1.0, 1, opts, lambda _: None)
        finally:
            router.stop()
    finally:
        fleet.stop()
    crit, shed = row["flows"]["critical"], row["flows"]["sheddable"]
    assert crit["sent"] > 0 and shed["sent"] > 0
    assert crit["ok"] == crit["sent"] and shed["ok"] == shed["sent"], row
    assert row["total"]["sent"] == crit["sent"] + shed["sent"] == row["requests"]
    assert crit["ttft_p50"] is not None and crit["output_tokens"] > 0
    fc = row["epp_flow_control_metrics"]
    assert fc["requests_total{outcome=Dispatched,priority=100}"] == crit["sent"]
    assert fc["requests_total{outcome=Dispatched,priority=-1}"] == shed["sent"]

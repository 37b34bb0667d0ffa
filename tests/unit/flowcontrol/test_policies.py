"""Policy arithmetic and the `flowControl:` schema (both the GIE and the llm-d-router one)."""

from __future__ import annotations

import math

import pytest

from epp.flowcontrol.config import parse_quantity
from epp.flowcontrol.fairness import ProgramAwareFairness
from epp.flowcontrol.ordering import FAR_FUTURE, slo_deadline
from epp.flowcontrol.ticket import Ticket
from epp.scheduling.config import load_config
from epp.scheduling.plugin import ConfigError, build_plugin

# flowcontrol.md §1.4, verbatim apart from the scorers this project names the same way.
REFERENCE_EXAMPLE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: ["flowControl"]
plugins:
- type: utilization-detector
  parameters: {queueDepthThreshold: 2, kvCacheUtilThreshold: 0.85, metricsStalenessThreshold: "200ms", headroom: 0.2}
- type: round-robin-fairness-policy
- type: edf-ordering-policy
- type: static-usage-limit-policy
  name: ceiling
  parameters: {threshold: 1.0}
- type: queue-scorer
- type: prefix-cache-scorer
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: prefix-cache-scorer, weight: 3}]
saturationDetector: {pluginRef: utilization-detector}
flowControl:
  maxBytes: 10Gi
  maxRequests: 20k
  defaultRequestTTL: 30s
  defaultPriorityBand: {maxBytes: 2Gi, maxRequests: 5000}
  priorityBands:
  - {priority: 100, maxBytes: 5Gi, maxRequests: 500, fairnessPolicyRef: round-robin-fairness-policy, orderingPolicyRef: fcfs-ordering-policy}
  - {priority: -1, maxRequests: 50, orderingPolicyRef: edf-ordering-policy}
  usageLimitPolicyPluginRef: ceiling
"""

GUIDE_MINIMAL = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
flowControl:
  maxBytes: 1000000000
  defaultRequestTTL: 30s
  priorityBands:
  - priority: 100
    maxBytes: 500000000
"""


def test_the_reference_example_loads_with_its_values():
    f = load_config(REFERENCE_EXAMPLE).flow
    assert f.enabled and not f.llmd
    assert (f.max_bytes, f.max_requests, f.ttl) == (10 * 2**30, 20_000, 30.0)
    hi, lo = f.bands
    assert (hi.priority, hi.max_bytes, hi.max_requests) == (100, 5 * 2**30, 500)
    assert hi.fairness.type_name == "round-robin-fairness-policy" and hi.ordering.type_name == "fcfs-ordering-policy"
    assert (lo.priority, lo.max_bytes, lo.max_requests) == (-1, 10**9, 50)  # band maxBytes default 1 GB
    assert lo.fairness.type_name == "global-strict-fairness-policy" and lo.ordering.type_name == "edf-ordering-policy"
    assert f.usage_limit.name == "ceiling" and f.detector.type_name == "utilization-detector"
    t = f.template(7)
    assert (t.max_bytes, t.max_requests) == (2 * 2**30, 5000)


def test_the_guide_minimal_form_loads_with_gie_defaults():
    f = load_config(GUIDE_MINIMAL).flow
    assert f.max_bytes == 10**9 and f.max_requests == 0 and f.ttl == 30.0
    assert [(b.priority, b.max_bytes, b.max_requests) for b in f.bands] == [(100, 500_000_000, 0)]
    assert f.usage_limit.type_name == "static-usage-limit-policy"  # auto-registered, as the reference


def test_llmd_schema_defaults_ttl_60s_band_cap_5000_and_band_zero():
    text = GUIDE_MINIMAL.replace("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1").replace(
        "  defaultRequestTTL: 30s\n", "  saturationDetector: {pluginRef: concurrency-detector}\n"
    )
    f = load_config(text).flow
    assert f.llmd and f.ttl == 60.0 and f.no_endpoint_ttl == 60.0 and f.split_budget
    assert sorted((b.priority, b.max_requests) for b in f.bands) == [(0, 5000), (100, 5000)]
    assert f.detector.type_name == "concurrency-detector"


def test_explicit_zero_ttl_means_no_ttl_even_in_llmd():
    text = GUIDE_MINIMAL.replace("inference.networking.x-k8s.io/v1alpha1", "llm-d.ai/v1alpha1").replace("30s", "0s")
    assert load_config(text).flow.ttl == 0.0


@pytest.mark.parametrize(
    "flow, fragment",
    [
        ("  maxRequest: 5", "flowControl.maxRequest: unknown field"),
        ("  priorityBands: [{priority: 1, maxByte: 5}]", "maxByte: unknown field"),
        ("  priorityBands: [{priority: 1}, {priority: 1}]", "priorityBands[1].priority: duplicate priority 1"),
        ("  priorityBands: [{maxBytes: 5}]", "priority: Field required"),
        ("  defaultRequestTTL: -1s", "defaultRequestTTL: must not be negative"),
        ("  defaultRequestTTL: soon", "defaultRequestTTL: invalid duration"),
        ("  maxBytes: 10 gigabytes", "maxBytes: '10 gigabytes' is not a quantity"),
        ("  maxRequests: 1500m", "maxRequests: '1500m' is not a quantity"),
        ("  usageLimitPolicyPluginRef: nope", "usageLimitPolicyPluginRef: pluginRef 'nope' names no plugin"),
        ("  usageLimitPolicyPluginRef: fcfs-ordering-policy", "is not a usage limit policy"),
        ("  defaultPriorityBand: {fairnessPolicyRef: fcfs-ordering-policy}", "is not a fairness policy"),
        ("  enableEviction: true", "enableEviction: eviction of in-flight requests is not supported"),
    ],
)
def test_bad_sections_are_errors_that_name_the_key(flow, fragment):
    text = (
        f"apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        f"featureGates: [flowControl]\nflowControl:\n{flow}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(text, "cfg.yaml")
    assert fragment in str(exc.value) and "cfg.yaml" in str(exc.value)


def test_a_section_without_the_gate_is_validated_and_reported_as_ignored():
    f = load_config(GUIDE_MINIMAL.replace("featureGates: [flowControl]\n", "")).flow
    assert not f.enabled and "feature gate is off" in f.warnings[0]


@pytest.mark.parametrize(
    "text, value",
    [
        ("500", 500),
        (20, 20),
        ("20k", 20_000),
        ("10Gi", 10 * 2**30),
        ("1e9", 10**9),
        ("1.5k", 1500),
        ("2Mi", 2 * 2**20),
        ("0", 0),
    ],
)
def test_quantities(text, value):
    assert parse_quantity(text, "x") == value


def test_static_and_holdback_ceilings():
    static = build_plugin("static-usage-limit-policy", "s", {"threshold": 0.9})
    assert static.ceilings([10, 0, -5]) == [0.9, 0.9, 0.9]
    rank = build_plugin("priority-holdback-policy", "h", {"minCeiling": 0.4})
    assert rank.ceilings([100, 50, 0, -10]) == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert rank.ceilings([5]) == [1.0]
    value = build_plugin("priority-holdback-policy", "v", {"minCeiling": 0.5, "maxCeiling": 0.9, "domain": "value"})
    assert value.ceilings([100, 90, 0]) == pytest.approx([0.9, 0.86, 0.5])
    with pytest.raises(ConfigError, match="minCeiling"):
        build_plugin("priority-holdback-policy", "x", {})
    with pytest.raises(ConfigError, match="threshold"):
        build_plugin("static-usage-limit-policy", "x", {"threshold": 1.5})


def test_attained_service_decays_with_its_half_life_and_is_divided_by_the_weight():
    p = build_plugin("program-aware-fairness", "p", {"lasHalfLifeSeconds": 10, "weights": {"gold": 4}})
    assert isinstance(p, ProgramAwareFairness)
    p.dispatched("a", 1000, now=0.0)
    p.served("a", 200, 100, now=0.0)  # prompt was 200 more than estimated; 100 output tokens x 2
    assert p.attained("a", 0.0) == pytest.approx(1400)
    assert p.attained("a", 10.0) == pytest.approx(700)
    assert p.attained("a", 20.0) == pytest.approx(350)
    assert p.attained("never", 5.0) == 0.0
    with pytest.raises(ConfigError, match="weights must be positive"):
        build_plugin("program-aware-fairness", "p", {"weights": {"x": 0}})


def test_service_memory_is_bounded():
    p = build_plugin("program-aware-fairness", "p", {"maxFlows": 3})
    for i in range(10):
        p.dispatched(f"f{i}", 10 * (i + 1), now=float(i))
    assert len(p.service) <= 3 and "f9" in p.service


def test_slo_deadline_from_either_header_and_far_future_otherwise():
    assert slo_deadline({"x-slo-ttft-ms": "250"}, 10.0) == pytest.approx(10.25)
    assert slo_deadline({"x-llm-d-slo-ttft-ms": "1000"}, 10.0) == pytest.approx(11.0)
    for bad in ({"x-slo-ttft-ms": "soon"}, {"x-slo-ttft-ms": "-5"}, {"x-slo-ttft-ms": "nan"}, {}):
        assert slo_deadline(bad, 10.0) == FAR_FUTURE


def test_edf_deadline_is_enqueue_plus_ttl_and_no_ttl_is_far_future():
    edf = build_plugin("edf-ordering-policy", "e", {})
    t1 = Ticket(None, "f", 0, 1, 1, enqueued=5.0, seq=1)
    t2 = Ticket(None, "f", 0, 1, 1, enqueued=6.0, seq=2)
    assert edf.key(t1, 30.0) == (35.0, 5.0, 1)
    assert edf.key(t2, 0.0)[0] == math.inf
    assert edf.key(t1, 30.0) < edf.key(t2, 0.0)

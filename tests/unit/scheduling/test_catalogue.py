"""The plugin catalogue: reference/llm-d formulas and this project's estimated-TTFT scorer."""

import base64

import pytest

from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.scheduling.config import load_config
from epp.scheduling.plugin import ConfigError, build_plugin
from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY, PrefixMatchInfo
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult


def ep(name, labels=None, inflight=0, tokens=0, **m) -> Endpoint:
    e = Endpoint(
        name=name,
        address=f"10.0.0.{len(name)}",
        port=8000,
        labels=labels or {},
        metrics=EndpointMetrics(update_time=1e12, **m),
    )
    for _ in range(inflight):
        e.inflight.add(tokens)
    return e


def score(type_name, endpoints, req=None, cycle=None, **params):
    plugin = build_plugin(type_name, type_name, params)
    return plugin.score(cycle or CycleState(), req or SchedulingRequest("r", "m"), endpoints)


def test_token_load_scorer():
    eps = [ep("a", inflight=1, tokens=1000), ep("b")]
    assert score("token-load-scorer", eps, queueThresholdTokens=4000) == [0.75, 1.0]


def test_active_request_scorer():
    eps = [ep("a", inflight=4), ep("b", inflight=1), ep("c")]
    assert score("active-request-scorer", eps) == [0.0, 0.75, 1.0]
    assert score("active-request-scorer", eps, idleThreshold=1) == [0.0, 1.0, 1.0]


def test_load_aware_scorer():
    eps = [ep("a", waiting_queue_size=0), ep("b", waiting_queue_size=64), ep("c", waiting_queue_size=500)]
    assert score("load-aware-scorer", eps) == [0.5, 0.25, 0.0]


def test_session_affinity_round_trip():
    a, b = ep("a"), ep("b")
    a.pod_name, a.namespace = "pod-a", "ns"
    plugin = build_plugin("session-affinity-scorer", "s", {})
    result = SchedulingResult({"default": ProfileResult([a])}, "default")
    plugin.pre_request(CycleState(), SchedulingRequest("r", "m"), result)
    ((key, token),) = result.response_headers
    assert key == "x-session-token" and base64.b64decode(token) == b"ns/pod-a"
    req = SchedulingRequest("r", "m", headers={"x-session-token": token})
    assert plugin.score(CycleState(), req, [a, b]) == [1.0, 0.0]


def test_no_hit_lru_spreads_cold_requests_and_is_neutral_when_warm():
    eps = [ep("a"), ep("b"), ep("c")]
    plugin = build_plugin("no-hit-lru-scorer", "n", {})
    picked = []
    for _ in range(6):
        scores = plugin.score(CycleState(), SchedulingRequest("r", "m"), eps)
        best = eps[scores.index(max(scores))]
        picked.append(best.name)
        plugin.pre_request(
            CycleState(), SchedulingRequest("r", "m"), SchedulingResult({"d": ProfileResult([best])}, "d")
        )
    assert sorted(picked[:3]) == ["a", "b", "c"] and picked[3:] == picked[:3]
    warm = CycleState({PREFIX_MATCH_KEY: PrefixMatchInfo([1, 2], {"a": 2}, 16)})
    assert plugin.score(warm, SchedulingRequest("r", "m"), eps) == [0.5, 0.5, 0.5]


def test_prefix_affinity_filter_sticks_until_warm_endpoint_is_too_slow():
    warm, cold = ep("warm"), ep("cold")
    info = PrefixMatchInfo(list(range(10)), {"warm": 10}, 16)
    f = build_plugin("prefix-cache-affinity-filter", "f", {"maxTTFTPenaltyMs": 1000, "peakPrefillThroughput": 10000})
    req = SchedulingRequest("r", "m", prompt_tokens=160)
    assert f.filter(CycleState({PREFIX_MATCH_KEY: info}), req, [warm, cold]) == [warm]
    for _ in range(11):
        warm.inflight.add(1000)  # 11,000 queued prefill tokens = 1.1 s at 10k tok/s
    assert f.filter(CycleState({PREFIX_MATCH_KEY: info}), req, [warm, cold]) == [warm, cold]


def test_role_and_label_filters():
    eps = [
        ep("p", {"llm-d.ai/role": "prefill"}),
        ep("d", {"llm-d.ai/role": "decode"}),
        ep("b", {"llm-d.ai/role": "both"}),
        ep("x"),
    ]
    cs, rq = CycleState(), SchedulingRequest("r", "m")
    assert [e.name for e in build_plugin("decode-filter", "d", {}).filter(cs, rq, eps)] == ["d", "b", "x"]
    assert [e.name for e in build_plugin("prefill-filter", "p", {}).filter(cs, rq, eps)] == ["p", "b"]
    f = build_plugin("by-label", "l", {"label": "llm-d.ai/role", "validValues": ["decode"], "allowsNoLabel": True})
    assert [e.name for e in f.filter(cs, rq, eps)] == ["d", "x"]
    f = build_plugin("label-selector-filter", "s", {"matchLabels": {"llm-d.ai/role": "both"}})
    assert [e.name for e in f.filter(cs, rq, eps)] == ["b"]


def test_utilization_and_concurrency_detectors_as_filters_fail_open():
    ok, busy, full = ep("ok"), ep("busy", waiting_queue_size=9), ep("full", kv_cache_usage_percent=0.95)
    stale = Endpoint(name="stale", address="x", port=1)
    cs, rq = CycleState(), SchedulingRequest("r", "m")
    f = build_plugin("utilization-detector", "u", {})
    assert f.filter(cs, rq, [ok, busy, full, stale]) == [ok]
    assert f.filter(cs, rq, [busy, full]) == [busy, full]
    c = build_plugin("concurrency-detector", "c", {"maxConcurrency": 2})
    a, b = ep("a", inflight=2), ep("b", inflight=1)
    assert c.filter(cs, rq, [a, b]) == [b]


def test_estimated_ttft_trades_cache_hit_against_queued_prefill():
    hot, cold = ep("hot"), ep("cold")
    info = PrefixMatchInfo(list(range(100)), {"hot": 100}, 16)  # hot holds the whole 1,600-token prompt
    req = SchedulingRequest("r", "m", prompt_tokens=1600)
    s = lambda **kw: score(
        "estimated-ttft-scorer",
        [hot, cold],
        req,
        CycleState({PREFIX_MATCH_KEY: info}),
        runningTokens=0,
        waitingTokens=0,
        **kw,
    )
    assert s(uncachedWeight=1)[0] > s(uncachedWeight=1)[1]  # cache hit wins while hot is idle
    hot.inflight.add(1500)
    assert s(uncachedWeight=1)[0] > s(uncachedWeight=1)[1]  # 1,500 queued < 1,600 saved: still worth it
    hot.inflight.add(200)
    assert s(uncachedWeight=1)[0] < s(uncachedWeight=1)[1]  # 1,700 queued > 1,600 saved: let go
    # A second copy of an unpopular prefix is charged 8x (default): hot stays preferred...
    assert s()[0] > s()[1]
    hot.inflight.add(11200)  # 12,900 queued > 8 x 1,600
    assert s()[0] < s()[1]  # ...until the queue on it outweighs even that


def test_estimated_ttft_counts_requests_the_prefill_gate_holds_for_an_endpoint():
    hot, cold = ep("hot"), ep("cold")
    info = PrefixMatchInfo(list(range(100)), {"hot": 100}, 16)
    req = SchedulingRequest("r", "m", prompt_tokens=1600)
    s = lambda: score(
        "estimated-ttft-scorer",
        [hot, cold],
        req,
        CycleState({PREFIX_MATCH_KEY: info}),
        runningTokens=0,
        waitingTokens=0,
        uncachedWeight=1,
    )
    hot.inflight.add(1500)
    assert s()[0] > s()[1]
    hot.inflight.held_tokens = 200  # waiting in the EPP for hot: 1,700 ahead > 1,600 saved
    assert s()[0] < s()[1]


def test_popular_prefix_is_replicated_unpopular_one_is_not():
    hot, cold = ep("hot"), ep("cold")
    req = SchedulingRequest("r", "m", prompt_tokens=1600)
    hot.inflight.add(1700)
    s = lambda pop: score(
        "estimated-ttft-scorer",
        [hot, cold],
        req,
        CycleState({PREFIX_MATCH_KEY: PrefixMatchInfo(list(range(100)), {"hot": 100}, 16, pop)}),
        runningTokens=0,
        waitingTokens=0,
    )
    assert s(0.1)[0] > s(0.1)[1]  # one copy is all 10 % of the traffic deserves: stay
    assert s(0.9)[0] < s(0.9)[1]  # 90 % of the traffic on one copy: make another


def test_prefix_popularity_follows_in_flight_requests():
    from epp.scheduling.plugins.prefix import PrefixPopularity

    p = PrefixPopularity()
    for _ in range(6):
        p.started(7)
    p.started(9)
    p.started(0)
    assert p.share(7, 4) == 6 / 8 and p.share(9, 4) == 1 / 8
    assert p.share(9, 16) == 1 / 16  # fewer in flight than endpoints: nothing is concentrated
    for _ in range(6):
        p.finished(7)
    assert p.share(7, 2) == 0 and p.total == 2


def test_estimated_ttft_charges_scraped_waiting_only_beyond_its_own_pending_prefill():
    # Both scrapes show 2 waiting; on "ours" those are the 2 requests the EPP just sent (already
    # charged as pending prefill), on "theirs" they come from elsewhere and queue ahead.
    ours, theirs = ep("ours", waiting_queue_size=2), ep("theirs", waiting_queue_size=2)
    ours.inflight.add(100)
    ours.inflight.add(100)
    theirs.inflight.add(200)
    req = SchedulingRequest("r", "m", prompt_tokens=100)
    costs = [1 / x for x in score("estimated-ttft-scorer", [ours, theirs], req, runningTokens=0, waitingTokens=256)]
    assert costs[1] / costs[0] == pytest.approx((200 + 100 + 256) / (200 + 100))
    ours.inflight.prefill_done(100)  # one started: the scrape's second waiting request is unexplained
    costs = [1 / x for x in score("estimated-ttft-scorer", [ours, theirs], req, runningTokens=0, waitingTokens=256)]
    assert costs[1] / costs[0] == pytest.approx((200 + 100 + 256) / (100 + 100 + 256))


def test_estimated_ttft_counts_lora_loads():
    a = ep("a", active_models=frozenset({"sql"}), max_active_models=1)
    b = ep("b", active_models=frozenset({"chat"}), max_active_models=1)
    c = ep("c", active_models=frozenset(), max_active_models=1)
    scores = score("estimated-ttft-scorer", [a, b, c], SchedulingRequest("r", "sql", prompt_tokens=100))
    assert scores[0] == 1.0 and scores[2] > scores[1]  # resident > free slot > must evict


PD = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters: {maxPrefixTokensToMatch: 16384, lruCapacityPerServer: 31250}
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-profile-handler
  parameters: {deciders: {prefill: prefix-based-pd-decider}}
- type: prefix-based-pd-decider
  parameters: {nonCachedTokens: 16}
schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: max-score-picker}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer, weight: 1}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: max-score-picker}, {pluginRef: prefix-cache-scorer, weight: 2}, {pluginRef: queue-scorer, weight: 1}]
"""


def test_disaggregation_sends_prefiller_header_for_long_uncached_prompts():
    sched = Scheduler(load_config(PD))
    pre, dec = ep("pre", {"llm-d.ai/role": "prefill"}), ep("dec", {"llm-d.ai/role": "decode"})
    long_req = SchedulingRequest("r", "m", prefix_input=b"x" * 400, prompt_tokens=100)
    result, _ = sched.schedule(long_req, [pre, dec])
    assert result.targets == [dec]
    assert result.request_headers == [("x-prefiller-host-port", pre.hostport)]
    short = SchedulingRequest("r", "m", prefix_input=b"hi", prompt_tokens=1)
    result, _ = sched.schedule(short, [pre, dec])
    assert result.targets == [dec] and result.request_headers == []


def test_disagg_handler_needs_a_decode_profile():
    with pytest.raises(ConfigError, match="decode"):
        load_config(PD.replace("- name: decode", "- name: other"))


def test_llm_d_sample_configs_load():
    load_config(PD)
    load_config(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: decode-filter\n"
        "- type: prefix-cache-scorer\n- type: max-score-picker\nschedulingProfiles:\n- name: default\n"
        "  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer, weight: 2}, "
        "{pluginRef: max-score-picker}]\n"
    )

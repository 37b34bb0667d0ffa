"""Plugin arithmetic against the reference formulas (gie-epp.md §4.3)."""

import random

import pytest
import xxhash

from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.scheduling.config import load_config
from epp.scheduling.plugin import ConfigError
from epp.scheduling.plugins.load import min_max_inverted
from epp.scheduling.plugins.lora import lora_affinity
from epp.scheduling.plugins.prefix_index import PrefixIndex, block_hashes
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import CycleState, SchedulingRequest


def ep(name, **m) -> Endpoint:
    return Endpoint(name=name, address=name, port=80, metrics=EndpointMetrics(update_time=1.0, **m))


def test_queue_scorer_formula():
    assert min_max_inverted([0, 5, 10]) == [1.0, 0.5, 0.0]
    assert min_max_inverted([3, 3]) == [1.0, 1.0]


def test_lora_affinity_levels():
    assert lora_affinity("a", frozenset({"a"}), frozenset(), 2) == 1.0
    assert lora_affinity("a", frozenset({"b"}), frozenset(), 2) == 0.8
    assert lora_affinity("a", frozenset({"b"}), frozenset({"a"}), 2) == 0.6
    assert lora_affinity("a", frozenset({"b", "c"}), frozenset(), 2) == 0.0


def test_block_hash_chain_matches_reference_scheme():
    data = b"a" * 64 + b"b" * 64 + b"c" * 10
    hs = block_hashes("m", "salt", data, 64, 256)
    h0 = xxhash.xxh64_intdigest(b"msalt")
    h1 = xxhash.xxh64_intdigest(b"a" * 64 + h0.to_bytes(8, "little"))
    h2 = xxhash.xxh64_intdigest(b"b" * 64 + h1.to_bytes(8, "little"))
    h3 = xxhash.xxh64_intdigest(b"c" * 10 + h2.to_bytes(8, "little"))
    assert hs == [h1, h2, h3]
    assert block_hashes("m", "", b"short", 64, 256) == []
    assert len(block_hashes("m", "", b"x" * 6400, 64, 3)) == 3
    assert block_hashes("m", "salt1", data, 64, 9) != block_hashes("m", "salt2", data, 64, 9)


def test_prefix_index_counts_consecutive_blocks_and_is_bounded():
    idx = PrefixIndex(default_capacity=4)
    idx.add("a", [1, 2, 3])
    idx.add("b", [1, 2])
    assert idx.match([1, 2, 3, 4]) == {"a": 3, "b": 2}
    assert idx.match([9, 1]) == {}
    idx.add("a", [5, 6])  # capacity 4: the oldest entries (1 then 2... ) are evicted
    assert len(idx) == 6 and sorted(idx.match([3])) == ["a"]
    assert idx.match([1, 2]) == {"b": 2}
    idx.remove_endpoint("b")
    assert idx.match([1]) == {} and idx.endpoints() == {"a"}


def schedule(config_text, endpoints, prompt=b"", n=1):
    sched = Scheduler(load_config(config_text))
    picks = []
    for _ in range(n):
        req = SchedulingRequest("r", "m", prefix_input=prompt, prompt_tokens=len(prompt) // 4)
        result, cycle = sched.schedule(req, endpoints)
        sched.pre_request(cycle, req, result)
        picks.append(result.targets)
    return picks


def test_default_config_prefers_short_queue_and_low_kv():
    eps = [
        ep("a", waiting_queue_size=10, kv_cache_usage_percent=0.9),
        ep("b", waiting_queue_size=0, kv_cache_usage_percent=0.1),
    ]
    assert all(t[0].name == "b" for t in schedule(None, eps, n=5))


@pytest.mark.parametrize("name", ["epp-default", "reference-default", "llm-d-affinity"])
def test_named_configs_follow_prefix_once_recorded(name):
    from epp.scheduling import configs

    eps = [ep("a"), ep("b"), ep("c")]
    prompt = b"system prompt " * 100
    picks = schedule(configs.text(name), eps, prompt, n=10)
    assert len({t[0].name for t in picks}) == 1  # equal load: affinity keeps the same endpoint


WEIGHTED = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: kv-cache-utilization-scorer
- {type: weighted-random-picker, parameters: {maxNumOfEndpoints: 2}}
"""


def test_weighted_random_picker_returns_fallbacks_and_follows_weights():
    eps = [
        ep("a", kv_cache_usage_percent=0.0),
        ep("b", kv_cache_usage_percent=0.75),
        ep("c", kv_cache_usage_percent=1.0),
    ]
    picks = schedule(WEIGHTED, eps, n=400)
    assert all(len(t) == 2 and t[0] is not t[1] for t in picks)
    firsts = [t[0].name for t in picks]
    assert "c" not in firsts  # score 0 is never drawn while others have weight
    assert firsts.count("a") > firsts.count("b") * 2


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("apiVersion: v9\nkind: EndpointPickerConfig\n", "apiVersion 'v9'"),
        ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nbogus: 1\n", "bogus: unknown field"),
        (
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: nope}]\n",
            "unknown plugin type 'nope'",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer, parameters: {x: 1}}]\n",
            "x: Extra inputs are not permitted",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}, {type: queue-scorer}]\n",
            "duplicate plugin name 'queue-scorer'",
        ),
        (
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]\n"
            "schedulingProfiles: [{name: d, plugins: [{pluginRef: missing}]}]\n",
            "pluginRef 'missing'",
        ),
        ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nfeatureGates: [warpDrive]\n", "warpDrive"),
        (
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: queue-scorer\n  weight: 2\n",
            "plugins.0.weight: unknown field",
        ),
        ("{{{", "not valid YAML"),
    ],
)
def test_invalid_configs_name_the_problem(text, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config(text, "cfg.yaml")
    assert fragment in str(exc.value) and "cfg.yaml" in str(exc.value)


REFERENCE_SAMPLE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: ["flowControl"]
plugins:
- name: q
  type: queue-scorer
  parameters: {}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: q, weight: 2}]
saturationDetector: {pluginRef: utilization-detector}
dataLayer: {sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]}
parser: {pluginRef: openai-parser}
"""


def test_reference_sample_config_from_section_4_2_loads_verbatim():
    cfg = load_config(REFERENCE_SAMPLE)
    assert list(cfg.profiles) == ["default"] and cfg.profiles["default"].scorers[0][1] == 2
    assert cfg.parser == "openai-parser" and cfg.feature_gates == {"flowControl"}
    assert {"utilization-detector", "metrics-data-source", "core-metrics-extractor"} <= set(cfg.plugins)


def test_max_score_picker_breaks_ties_randomly():
    eps = [ep("a"), ep("b"), ep("c")]
    random.seed(1)
    names = {
        schedule("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: queue-scorer}]\n", eps)[
            0
        ][0].name
        for _ in range(40)
    }
    assert names == {"a", "b", "c"}


def test_scores_are_clamped():
    from epp.scheduling.config import Profile
    from epp.scheduling.plugins.load import QueueScorer
    from epp.scheduling.plugins.pickers import MaxScorePicker, PickerParams
    from epp.scheduling.scheduler import run_profile

    class Wild(QueueScorer):
        def score(self, cycle, req, endpoints):
            return [5.0, -3.0]

    prof = Profile(
        "p",
        scorers=[(Wild("w", QueueScorer.Params()), 1.0), (QueueScorer("q", QueueScorer.Params()), 1.0)],
        picker=MaxScorePicker("m", PickerParams()),
    )
    eps = [ep("a", waiting_queue_size=10), ep("b", waiting_queue_size=0)]
    # a: clamp(5)=1 + 0 = 1 ; b: clamp(-3)=0 + 1 = 1 -> a tie, both possible; neither gets 5 or -3.
    got = {run_profile(prof, CycleState(), SchedulingRequest("r", "m"), eps).targets[0].name for _ in range(30)}
    assert got == {"a", "b"}


def test_a_request_scheduled_again_reuses_its_prompt_hashes_and_only_its_own():
    from epp.scheduling.plugin import build_plugin
    from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY

    producer = build_plugin("approx-prefix-cache-producer", "p", {})
    eps = [ep("a"), ep("b")]
    prompt = b"system prompt words " * 200
    first = SchedulingRequest("r", "m", prefix_input=prompt)
    producer.produce(CycleState(), first, eps)
    assert first.hash_memo and len(next(iter(first.hash_memo.values()))) > 10
    # The same prompt scheduled again (a held request retried): the hashes are taken over...
    again = SchedulingRequest("r", "m", prefix_input=prompt).reuse_hashes(first)
    assert again.hash_memo is first.hash_memo
    cycle = CycleState()
    producer.produce(cycle, again, eps)
    fresh = CycleState()
    copy = prompt[:7] + prompt[7:]  # equal bytes, another object
    assert copy == prompt and copy is not prompt
    producer.produce(fresh, SchedulingRequest("r", "m", prefix_input=copy), eps)
    assert cycle[PREFIX_MATCH_KEY].hashes == fresh[PREFIX_MATCH_KEY].hashes  # ...and are the same
    # ...but never by another prompt, model or salt.
    for other in (
        SchedulingRequest("r", "m", prefix_input=copy),
        SchedulingRequest("r", "m2", prefix_input=prompt),
        SchedulingRequest("r", "m", prefix_input=prompt, cache_salt="s"),
    ):
        assert other.reuse_hashes(first).hash_memo is None

"""Each engine mapping reads the §3.2 names; missing metrics are per-field errors."""

from __future__ import annotations

import pytest

from epp.datalayer.engines import ENGINES, WANTED, MetricSpec, extract, parse_spec
from epp.datalayer.promtext import parse
from epp.datalayer.vllmpage import VllmState, vllm_page


def _extract(engine: str, text: str):
    return extract(engine, parse(text, WANTED[engine]))


def test_vllm_realistic_page():
    page = vllm_page(
        VllmState(
            waiting=3,
            running=7,
            kv_usage=0.42,
            block_size=32,
            num_gpu_blocks=1000,
            max_lora=2,
            running_lora="sql-lora, math-lora",
            waiting_lora="x",
            prefix_queries=500.0,
            prefix_hits=125.0,
        )
    )
    fields, errors = _extract("vllm", page)
    assert errors == []
    assert fields == {
        "waiting_queue_size": 3,
        "running_requests_size": 7,
        "kv_cache_usage_percent": 0.42,
        "active_models": frozenset({"sql-lora", "math-lora"}),
        "waiting_models": frozenset({"x"}),
        "max_active_models": 2,
        "served_models": frozenset({"meta-llama/Llama-3.1-8B-Instruct"}),
        "cache_block_size": 32,
        "cache_num_blocks": 1000,
        "prefix_cache_queries": 500.0,
        "prefix_cache_hits": 125.0,
    }


def test_vllm_lora_picks_largest_value_and_latest_timestamp_wins():
    text = (
        'vllm:num_requests_waiting{model_name="a"} 1 1000\n'
        'vllm:num_requests_waiting{model_name="b"} 5 3000\n'
        'vllm:num_requests_waiting{model_name="c"} 2 2000\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="new",waiting_lora_adapters=""} 1.7e9\n'
        'vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters="w"} 1.6e9\n'
    )
    fields, _ = _extract("vllm", text)
    assert fields["waiting_queue_size"] == 5
    assert fields["active_models"] == frozenset({"new"})
    assert fields["waiting_models"] == frozenset()


def test_missing_metrics_are_errors_but_others_update():
    fields, errors = _extract("vllm", "vllm:num_requests_running 4\n")
    assert fields == {"running_requests_size": 4}
    joined = " ".join(errors)
    for name in (
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    ):
        assert name in joined
    # Optional prefix-cache counters are never errors.
    assert "prefix_cache" not in joined


def test_vllm_cache_info_before_profiling():
    text = 'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1\n'
    fields, errors = _extract("vllm", text)
    assert fields["cache_block_size"] == 16
    assert "cache_num_blocks" not in fields
    assert any("num_gpu_blocks" in e or "None" in e for e in errors)


def test_sglang():
    text = (
        "# TYPE sglang:num_queue_reqs gauge\n"
        'sglang:num_queue_reqs{model_name="m"} 6.0\n'
        'sglang:num_running_reqs{model_name="m"} 11.0\n'
        'sglang:token_usage{model_name="m"} 0.73\n'
        'sglang:cache_config_info{page_size="1",num_pages="240000",model_name="m"} 1.0\n'
    )
    fields, errors = _extract("sglang", text)
    assert errors == []
    assert fields == {
        "waiting_queue_size": 6,
        "running_requests_size": 11,
        "kv_cache_usage_percent": 0.73,
        "cache_block_size": 1,
        "cache_num_blocks": 240000,
        "served_models": frozenset({"m"}),
    }


def test_trtllm_serve():
    text = (
        "trtllm_num_requests_waiting 2\n"
        "trtllm_num_requests_running 9\n"
        "trtllm_kv_cache_utilization 0.5\n"
        "trtllm_kv_cache_tokens_per_block 64\n"
        "trtllm_kv_cache_max_blocks 5000\n"
    )
    fields, errors = _extract("trtllm-serve", text)
    assert errors == []
    assert fields == {
        "waiting_queue_size": 2,
        "running_requests_size": 9,
        "kv_cache_usage_percent": 0.5,
        "cache_block_size": 64,
        "cache_num_blocks": 5000,
    }


def test_triton_tensorrt_llm_selects_by_label():
    text = (
        "# TYPE nv_trt_llm_request_metrics gauge\n"
        'nv_trt_llm_request_metrics{model="ensemble",request_type="context",version="1"} 1\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="scheduled",version="1"} 8\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="waiting",version="1"} 3\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="max",version="1"} 64\n'
        "# TYPE nv_trt_llm_kv_cache_block_metrics gauge\n"
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="ensemble",version="1"} 7000\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="free",model="ensemble",version="1"} 6000\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="ensemble",version="1"} 32\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="ensemble",version="1"} 0.142\n'
    )
    fields, errors = _extract("triton-tensorrt-llm", text)
    assert errors == []
    assert fields == {
        "waiting_queue_size": 3,
        "running_requests_size": 8,
        "kv_cache_usage_percent": 0.142,
        "cache_block_size": 32,
        "cache_num_blocks": 7000,
    }


def test_unknown_engine_falls_back_to_vllm_with_error():
    fields, errors = extract("nope", parse("vllm:num_requests_waiting 1\n", WANTED["vllm"]))
    assert fields["waiting_queue_size"] == 1
    assert "unknown engine 'nope'" in errors[0]


def test_non_finite_value_is_an_error_not_a_crash():
    fields, errors = _extract("vllm", "vllm:num_requests_waiting NaN\nvllm:num_requests_running +Inf\n")
    assert "waiting_queue_size" not in fields and "running_requests_size" not in fields
    assert len([e for e in errors if "non-finite" in e]) == 2


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("vllm:num_requests_waiting", MetricSpec("vllm:num_requests_waiting")),
        ("m{a=b}", MetricSpec("m", (("a", "b"),))),
        ('m{a="b", c = d}', MetricSpec("m", (("a", "b"), ("c", "d")))),
        ("m{}", MetricSpec("m")),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("bad", ["", "1abc", "m{a}", "m{=b}", "m{a=b"])
def test_parse_spec_rejects(bad):
    with pytest.raises(ValueError, match="metric spec"):
        parse_spec(bad)


def test_every_engine_declares_its_wanted_names():
    for name, cfg in ENGINES.items():
        assert WANTED[name] == cfg.wanted() and WANTED[name]

"""A realistic vLLM (V1 engine) /metrics page, for benchmarks and tests.

Shape and size follow a real page (~45 KB): prometheus_client process/GC families, the
fastapi instrumentator's per-handler HTTP histograms, and vLLM's own gauges, counters and
latency/token histograms with their `_created` series. The few families the EPP reads sit
among them the way they do on a real server, so parser cost measured against this page is
honest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

_TIME_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
_ITER_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_HTTP_HANDLERS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
    "/version",
    "/ping",
)
_HIGHR_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    3.5,
    4.0,
    4.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)


@dataclass(slots=True)
class VllmState:
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    block_size: int = 16
    num_gpu_blocks: int = 27120
    max_lora: int = 4
    running_lora: str = ""
    waiting_lora: str = ""
    lora_ts: float = 1.7e9
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0


def _histogram(out: list[str], name: str, doc: str, labels: str, buckets, rng: random.Random) -> None:
    out.append(f"# HELP {name} {doc}")
    out.append(f"# TYPE {name} histogram")
    total = 0
    for le in buckets:
        total += rng.randint(0, 50)
        out.append(f'{name}_bucket{{{labels},le="{float(le)}"}} {float(total)}')
    out.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(total)}')
    out.append(f"{name}_count{{{labels}}} {float(total)}")
    out.append(f"{name}_sum{{{labels}}} {rng.random() * 1000 * total}")
    out.append(f"# HELP {name}_created {doc}")
    out.append(f"# TYPE {name}_created gauge")
    out.append(f"{name}_created{{{labels}}} 1.7318236421536875e+09")


def _gauge(out: list[str], name: str, doc: str, labels: str, value: float, typ: str = "gauge") -> None:
    out.append(f"# HELP {name} {doc}")
    out.append(f"# TYPE {name} {typ}")
    out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")


def vllm_page(state: VllmState, seed: int = 0, model: str = MODEL) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    _gauge(
        out,
        "python_gc_objects_collected_total",
        "Objects collected during gc",
        'generation="0"',
        float(rng.randint(1000, 99999)),
        "counter",
    )
    for gen in (1, 2):
        out.append(f'python_gc_objects_collected_total{{generation="{gen}"}} {float(rng.randint(100, 9999))}')
    _gauge(
        out,
        "python_gc_objects_uncollectable_total",
        "Uncollectable objects found during GC",
        'generation="0"',
        0.0,
        "counter",
    )
    _gauge(
        out,
        "python_gc_collections_total",
        "Number of times this generation was collected",
        'generation="0"',
        float(rng.randint(100, 9999)),
        "counter",
    )
    _gauge(
        out,
        "python_info",
        "Python platform information",
        'implementation="CPython",major="3",minor="12",patchlevel="11",version="3.12.11"',
        1.0,
    )
    for name, v in (
        ("process_virtual_memory_bytes", 1.2e10),
        ("process_resident_memory_bytes", 3.1e9),
        ("process_start_time_seconds", 1.73e9),
        ("process_cpu_seconds_total", 8123.4),
        ("process_open_fds", 187.0),
        ("process_max_fds", 1048576.0),
    ):
        _gauge(out, name, name.replace("_", " "), "", v)

    _gauge(
        out,
        "http_requests_total",
        "Total number of requests by method, status and handler.",
        'handler="/v1/completions",method="POST",status="2xx"',
        float(rng.randint(1, 10**6)),
        "counter",
    )
    for h in _HTTP_HANDLERS[1:]:
        out.append(f'http_requests_total{{handler="{h}",method="POST",status="2xx"}} {float(rng.randint(1, 10**6))}')
    out.append("# HELP http_request_size_bytes Content length of incoming requests by handler.")
    out.append("# TYPE http_request_size_bytes summary")
    for h in _HTTP_HANDLERS:
        out.append(f'http_request_size_bytes_count{{handler="{h}"}} {float(rng.randint(1, 10**6))}')
        out.append(f'http_request_size_bytes_sum{{handler="{h}"}} {float(rng.randint(1, 10**9))}')
    _histogram(
        out,
        "http_request_duration_highr_seconds",
        "Latency with many buckets but no API specific labels.",
        'handler="all"',
        _HIGHR_BUCKETS,
        rng,
    )
    for h in _HTTP_HANDLERS:
        _histogram(
            out,
            "http_request_duration_seconds",
            "Latency with only few buckets by handler.",
            f'handler="{h}",method="POST"',
            (0.1, 0.5, 1.0),
            rng,
        )

    base = f'engine="0",model_name="{model}"'
    _gauge(
        out, "vllm:num_requests_running", "Number of requests in model execution batches.", base, float(state.running)
    )
    _gauge(out, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", base, float(state.waiting))
    _gauge(out, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", base, state.kv_usage)
    _gauge(
        out,
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        base,
        state.prefix_queries,
        "counter",
    )
    _gauge(
        out,
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        base,
        state.prefix_hits,
        "counter",
    )
    _gauge(out, "vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", base, 0.0, "counter")
    _gauge(
        out,
        "vllm:prompt_tokens_total",
        "Number of prefill tokens processed.",
        base,
        float(rng.randint(1, 10**9)),
        "counter",
    )
    _gauge(
        out,
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        base,
        float(rng.randint(1, 10**9)),
        "counter",
    )
    _gauge(
        out,
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        base + ',finished_reason="stop"',
        float(rng.randint(1, 10**6)),
        "counter",
    )
    for reason in ("length", "abort"):
        out.append(f'vllm:request_success_total{{{base},finished_reason="{reason}"}} {float(rng.randint(1, 10**4))}')
    for name, buckets in (
        ("vllm:request_prompt_tokens", _TOKEN_BUCKETS),
        ("vllm:request_generation_tokens", _TOKEN_BUCKETS),
        ("vllm:iteration_tokens_total", _ITER_BUCKETS),
        ("vllm:request_max_num_generation_tokens", _TOKEN_BUCKETS),
        ("vllm:request_params_n", (1, 2, 5, 10, 20)),
        ("vllm:request_params_max_tokens", _TOKEN_BUCKETS),
        ("vllm:time_to_first_token_seconds", _TIME_BUCKETS),
        ("vllm:time_per_output_token_seconds", _TPOT_BUCKETS),
        ("vllm:inter_token_latency_seconds", _TPOT_BUCKETS),
        ("vllm:e2e_request_latency_seconds", _TIME_BUCKETS),
        ("vllm:request_queue_time_seconds", _TIME_BUCKETS),
        ("vllm:request_inference_time_seconds", _TIME_BUCKETS),
        ("vllm:request_prefill_time_seconds", _TIME_BUCKETS),
        ("vllm:request_decode_time_seconds", _TIME_BUCKETS),
    ):
        _histogram(out, name, f"Histogram of {name[5:].replace('_', ' ')}.", base, buckets, rng)
    _gauge(
        out,
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        f'block_size="{state.block_size}",cache_dtype="auto",calculate_kv_scales="False",cpu_offload_gb="0",'
        f'enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",'
        f'num_cpu_blocks="None",num_gpu_blocks="{state.num_gpu_blocks}",num_gpu_blocks_override="None",'
        f'prefix_caching_hash_algo="builtin",sliding_window="None",swap_space="4",swap_space_bytes="4294967296"',
        1.0,
    )
    _gauge(
        out,
        "vllm:lora_requests_info",
        "Running stats on lora requests.",
        f'max_lora="{state.max_lora}",running_lora_adapters="{state.running_lora}",'
        f'waiting_lora_adapters="{state.waiting_lora}"',
        state.lora_ts,
    )
    return "\n".join(out) + "\n"

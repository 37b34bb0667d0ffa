"""Prometheus text exposition of an engine's state, under a chosen engine's metric names.

Names follow what each server exports (table in gie-epp reference §3.2), so the EPP's
scraper and its per-engine mappings can be tested against every engine type:

* vllm: vllm:num_requests_running/_waiting, vllm:kv_cache_usage_perc,
  vllm:cache_config_info{block_size,num_gpu_blocks}, vllm:lora_requests_info{...},
  prefix-cache and token counters, TTFT/ITL/e2e/queue/prefill/decode histograms.
* sglang: sglang:num_running_reqs, sglang:num_queue_reqs, sglang:token_usage,
  sglang:cache_config_info{page_size,num_pages}, ...
* trtllm-serve: trtllm_num_requests_running/_waiting, trtllm_kv_cache_utilization,
  trtllm_kv_cache_tokens_per_block, trtllm_kv_cache_max_blocks, ...
* triton-tensorrt-llm: nv_trt_llm_request_metrics{request_type=...},
  nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=...}, ...

Latencies are engine (simulated) seconds, i.e. what the real server would report; with
--time-scale 0.1 they are ten times the wall-clock latencies a client measures.
Text is built by hand: it is scraped every 50 ms per replica and must stay cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from epp.sim.engine import Engine
from epp.sim.stats import Histogram

ENGINES = ("vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(d: dict[str, str]) -> str:
    return ",".join(f'{k}="{_esc(str(v))}"' for k, v in d.items())


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v)) + ".0"
    return repr(float(v))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: str, value: float) -> None:
        self.lines.append(f"{name}{{{labels}}} {_num(value)}" if labels else f"{name} {_num(value)}")

    def gauge(self, name: str, labels: str, value: float, help_: str) -> None:
        self.family(name, "gauge", help_)
        self.sample(name, labels, value)

    def counter(self, name: str, labels: str, value: float, help_: str) -> None:
        # prometheus_client convention: family without _total, sample with it.
        base = name[:-6] if name.endswith("_total") else name
        self.family(base, "counter", help_)
        self.sample(base + "_total", labels, value)

    def histogram(self, name: str, labels: str, h: Histogram, help_: str) -> None:
        self.family(name, "histogram", help_)
        sep = "," if labels else ""
        cum = h.cumulative()
        for bound, c in zip(h.bounds, cum[:-1], strict=True):  # the last count is the +Inf bucket
            self.lines.append(f'{name}_bucket{{{labels}{sep}le="{_num(bound)}"}} {_num(c)}')
        self.lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {_num(h.count)}')
        self.lines.append(f"{name}_count{{{labels}}} {_num(h.count)}")
        self.lines.append(f"{name}_sum{{{labels}}} {_num(h.sum)}")

    def text(self) -> bytes:
        self.lines.append("")
        return "\n".join(self.lines).encode()


@dataclass
class MetricsRenderer:
    engine: Engine
    model_name: str
    engine_kind: str = "vllm"

    def __post_init__(self) -> None:
        if self.engine_kind not in ENGINES:
            raise ValueError(f"unknown engine {self.engine_kind!r}; one of {', '.join(ENGINES)}")
        self._hist_cache: tuple[int, list[str]] | None = None

    def render(self) -> bytes:
        return getattr(self, "_" + self.engine_kind.replace("-", "_"))()

    def _histograms(self, w: _Writer, specs: list[tuple[str, Histogram, str]], labels: str) -> None:
        version = self.engine.stats.version
        if self._hist_cache is not None and self._hist_cache[0] == version:
            w.lines.extend(self._hist_cache[1])
            return
        hw = _Writer()
        for name, h, help_ in specs:
            hw.histogram(name, labels, h, help_)
        self._hist_cache = (version, hw.lines)
        w.lines.extend(hw.lines)

    def _vllm(self) -> bytes:
        e, s, cfg = self.engine, self.engine.stats, self.engine.config
        lab = _labels({"engine": "0", "model_name": self.model_name})
        w = _Writer()
        w.gauge("vllm:num_requests_running", lab, e.num_running, "Number of requests in model execution batches.")
        w.gauge("vllm:num_requests_waiting", lab, e.num_waiting, "Number of requests waiting to be processed.")
        w.gauge("vllm:kv_cache_usage_perc", lab, e.kv_usage, "KV-cache usage. 1 means 100 percent usage.")
        w.gauge(
            "vllm:gpu_cache_usage_perc",
            lab,
            e.kv_usage,
            "GPU KV-cache usage (deprecated name). 1 means 100 percent usage.",
        )
        w.gauge(
            "vllm:cache_config_info",
            _labels(
                {
                    "block_size": str(cfg.block_size),
                    "cache_dtype": "auto",
                    "enable_prefix_caching": str(cfg.enable_prefix_caching),
                    "engine": "0",
                    "gpu_memory_utilization": "0.9",
                    "num_gpu_blocks": str(cfg.num_gpu_blocks),
                }
            ),
            1,
            "Information of the LLMEngine CacheConfig",
        )
        w.gauge(
            "vllm:lora_requests_info",
            _labels(
                {
                    "max_lora": str(cfg.max_loras),
                    "running_lora_adapters": ",".join(e.running_loras()),
                    "waiting_lora_adapters": ",".join(e.waiting_loras()),
                }
            ),
            time.time(),
            "Running stats on lora requests.",
        )
        w.counter("vllm:num_preemptions_total", lab, s.preemptions, "Cumulative number of preemption from the engine.")
        w.counter(
            "epp_sim:lora_adapter_loads_total",
            lab,
            s.lora_loads,
            "Adapters loaded into a GPU slot (simulator only: vLLM does not export this).",
        )
        w.counter("vllm:prompt_tokens_total", lab, s.prompt_tokens, "Number of prefill tokens processed.")
        w.counter("vllm:generation_tokens_total", lab, s.generation_tokens, "Number of generation tokens processed.")
        w.counter(
            "vllm:prefix_cache_queries_total",
            lab,
            s.prefix_cache_queries,
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        w.counter(
            "vllm:prefix_cache_hits_total",
            lab,
            s.prefix_cache_hits,
            "Prefix cache hits, in terms of number of cached tokens.",
        )
        w.family("vllm:request_success", "counter", "Count of successfully processed requests.")
        for reason in ("stop", "length", "abort"):
            w.sample("vllm:request_success_total", f'{lab},finished_reason="{reason}"', s.finished.get(reason, 0))
        self._histograms(
            w,
            [
                ("vllm:time_to_first_token_seconds", s.ttft, "Histogram of time to first token in seconds."),
                ("vllm:inter_token_latency_seconds", s.itl, "Histogram of inter-token latency in seconds."),
                (
                    "vllm:time_per_output_token_seconds",
                    s.itl,
                    "Histogram of time per output token in seconds (deprecated name).",
                ),
                ("vllm:e2e_request_latency_seconds", s.e2e, "Histogram of e2e request latency in seconds."),
                (
                    "vllm:request_queue_time_seconds",
                    s.queue_time,
                    "Histogram of time spent in WAITING phase for request.",
                ),
                (
                    "vllm:request_prefill_time_seconds",
                    s.prefill_time,
                    "Histogram of time spent in PREFILL phase for request.",
                ),
                (
                    "vllm:request_decode_time_seconds",
                    s.decode_time,
                    "Histogram of time spent in DECODE phase for request.",
                ),
                ("vllm:request_prompt_tokens", s.request_prompt_tokens, "Number of prefill tokens processed."),
                (
                    "vllm:request_generation_tokens",
                    s.request_generation_tokens,
                    "Number of generation tokens processed.",
                ),
            ],
            lab,
        )
        return w.text()

    def _sglang(self) -> bytes:
        e, s, cfg = self.engine, self.engine.stats, self.engine.config
        lab = _labels({"model_name": self.model_name})
        w = _Writer()
        w.gauge("sglang:num_running_reqs", lab, e.num_running, "The number of running requests.")
        w.gauge("sglang:num_queue_reqs", lab, e.num_waiting, "The number of requests in the waiting queue.")
        w.gauge("sglang:token_usage", lab, e.kv_usage, "The token usage.")
        w.gauge(
            "sglang:cache_config_info",
            _labels(
                {"model_name": self.model_name, "page_size": str(cfg.block_size), "num_pages": str(cfg.num_gpu_blocks)}
            ),
            1,
            "Cache configuration.",
        )
        hit_rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        w.gauge("sglang:cache_hit_rate", lab, hit_rate, "The prefix cache hit rate.")
        w.counter("sglang:prompt_tokens_total", lab, s.prompt_tokens, "Number of prefill tokens processed.")
        w.counter("sglang:generation_tokens_total", lab, s.generation_tokens, "Number of generation tokens processed.")
        w.counter("sglang:num_requests_total", lab, sum(s.finished.values()), "Number of requests processed.")
        self._histograms(
            w,
            [
                ("sglang:time_to_first_token_seconds", s.ttft, "Histogram of time to first token in seconds."),
                ("sglang:inter_token_latency_seconds", s.itl, "Histogram of inter-token latency in seconds."),
                ("sglang:e2e_request_latency_seconds", s.e2e, "Histogram of End-to-end request latency in seconds"),
            ],
            lab,
        )
        return w.text()

    def _trtllm_serve(self) -> bytes:
        e, s, cfg = self.engine, self.engine.stats, self.engine.config
        lab = _labels({"model_name": self.model_name, "engine_type": "trtllm"})
        w = _Writer()
        w.gauge("trtllm_num_requests_running", lab, e.num_running, "Number of requests currently running.")
        w.gauge("trtllm_num_requests_waiting", lab, e.num_waiting, "Number of requests waiting.")
        w.gauge("trtllm_kv_cache_utilization", lab, e.kv_usage, "KV cache utilization (0..1).")
        w.gauge("trtllm_kv_cache_tokens_per_block", lab, cfg.block_size, "Tokens per KV cache block.")
        w.gauge("trtllm_kv_cache_max_blocks", lab, cfg.num_gpu_blocks, "Maximum number of KV cache blocks.")
        w.counter(
            "trtllm_request_success_total",
            lab,
            sum(v for k, v in s.finished.items() if k != "abort"),
            "Count of successfully processed requests.",
        )
        self._histograms(
            w,
            [
                ("trtllm_time_to_first_token_seconds", s.ttft, "Histogram of time to first token in seconds."),
                ("trtllm_time_per_output_token_seconds", s.itl, "Histogram of time per output token in seconds."),
                ("trtllm_e2e_request_latency_seconds", s.e2e, "Histogram of end to end request latency in seconds."),
                (
                    "trtllm_request_queue_time_seconds",
                    s.queue_time,
                    "Histogram of time spent in WAITING phase for request.",
                ),
            ],
            lab,
        )
        return w.text()

    def _triton_tensorrt_llm(self) -> bytes:
        e, s, cfg = self.engine, self.engine.stats, self.engine.config
        base = {"model": "tensorrt_llm", "version": "1"}
        w = _Writer()
        w.family("nv_trt_llm_request_metrics", "gauge", "TRT LLM request metrics")
        active = e.num_running
        for rtype, v in (
            ("waiting", e.num_waiting),
            ("scheduled", active),
            ("active", active),
            ("max", cfg.max_num_seqs),
            ("context", sum(1 for r in e.running if r.num_output_tokens == 0)),
            ("generation", sum(1 for r in e.running if r.num_output_tokens > 0)),
        ):
            w.sample("nv_trt_llm_request_metrics", _labels({**base, "request_type": rtype}), v)
        w.family("nv_trt_llm_kv_cache_block_metrics", "gauge", "TRT LLM KV cache block metrics")
        used = cfg.num_gpu_blocks - e.kv.num_free
        for btype, v in (
            ("max", cfg.num_gpu_blocks),
            ("free", e.kv.num_free),
            ("used", used),
            ("tokens_per", cfg.block_size),
            ("fraction", e.kv_usage),
        ):
            w.sample("nv_trt_llm_kv_cache_block_metrics", _labels({**base, "kv_cache_block_type": btype}), v)
        lab = _labels(base)
        w.family("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes")
        w.sample("nv_inference_request_success", lab, sum(v for k, v in s.finished.items() if k != "abort"))
        self._histograms(
            w,
            [
                (
                    "nv_inference_first_response_histogram_ms",
                    s.ttft,
                    "Duration from request to first response (engine seconds in the simulator)",
                )
            ],
            lab,
        )
        return w.text()

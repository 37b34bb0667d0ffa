"""Which metric means what, per model-server engine (gie-epp.md §3.2), and the extraction.

Specs are PromQL-style selectors `name{label=value,...}` (quotes optional), as in the
reference `core-metrics-extractor`. Among the samples that match a spec, the one with the
largest timestamp wins (ties -> first in the page); for the LoRA spec the largest *value*
wins, because vLLM emits a new `lora_requests_info` series whenever the adapter set changes
and its value is the time of that change.

Each missing metric is an error for its field only; the other fields still update, and a
field that was not found keeps its previous value (the caller merges).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from epp.datalayer.promtext import Families, Sample

DEFAULT_ENGINE = "vllm"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, sample: Sample) -> bool:
        sl = sample.labels
        return all(sl.get(key) == value for key, value in self.labels)

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in self.labels)
        return f"{self.name}{{{inner}}}"


_SPEC = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_SPEC_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*(?:"([^"]*)"|([^,"]*?))\s*(?:,|$)')


def parse_spec(spec: str) -> MetricSpec:
    """`name{label=value,label2="v2"}` -> MetricSpec; raises ValueError naming the spec."""
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError(f"invalid metric spec {spec!r}")
    name, body = m.group(1), m.group(2)
    labels: list[tuple[str, str]] = []
    if body is not None and body.strip():
        pos = 0
        body = body.strip()
        while pos < len(body):
            lm = _SPEC_LABEL.match(body, pos)
            if lm is None or lm.end() == pos:
                raise ValueError(f"invalid label matcher in metric spec {spec!r}")
            labels.append((lm.group(1), lm.group(2) if lm.group(2) is not None else lm.group(3)))
            pos = lm.end()
    return MetricSpec(name, tuple(labels))


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """One engine's mapping (reference `engineConfigs[]` entry)."""

    name: str
    queued_requests: MetricSpec | None = None
    running_requests: MetricSpec | None = None
    kv_usage: MetricSpec | None = None
    lora: MetricSpec | None = None
    cache_info: MetricSpec | None = None  # block size / count carried as labels
    cache_block_size_label: str = ""
    cache_num_blocks_label: str = ""
    cache_block_size: MetricSpec | None = None  # ... or as gauges
    cache_num_blocks: MetricSpec | None = None
    # Optional counters: read when the engine exports them, never an error when absent.
    prefix_cache_queries: MetricSpec | None = None
    prefix_cache_hits: MetricSpec | None = None

    def wanted(self) -> frozenset[str]:
        """Metric names the parser has to read for this engine (nothing else is parsed)."""
        specs = (
            self.queued_requests,
            self.running_requests,
            self.kv_usage,
            self.lora,
            self.cache_info,
            self.cache_block_size,
            self.cache_num_blocks,
            self.prefix_cache_queries,
            self.prefix_cache_hits,
        )
        return frozenset(s.name for s in specs if s is not None)


ENGINES: dict[str, EngineConfig] = {
    "vllm": EngineConfig(
        name="vllm",
        queued_requests=parse_spec("vllm:num_requests_waiting"),
        running_requests=parse_spec("vllm:num_requests_running"),
        kv_usage=parse_spec("vllm:kv_cache_usage_perc"),
        lora=parse_spec("vllm:lora_requests_info"),
        cache_info=parse_spec("vllm:cache_config_info"),
        cache_block_size_label="block_size",
        cache_num_blocks_label="num_gpu_blocks",
        prefix_cache_queries=parse_spec("vllm:prefix_cache_queries_total"),
        prefix_cache_hits=parse_spec("vllm:prefix_cache_hits_total"),
    ),
    "sglang": EngineConfig(
        name="sglang",
        queued_requests=parse_spec("sglang:num_queue_reqs"),
        running_requests=parse_spec("sglang:num_running_reqs"),
        kv_usage=parse_spec("sglang:token_usage"),
        cache_info=parse_spec("sglang:cache_config_info"),
        cache_block_size_label="page_size",
        cache_num_blocks_label="num_pages",
    ),
    "trtllm-serve": EngineConfig(
        name="trtllm-serve",
        queued_requests=parse_spec("trtllm_num_requests_waiting"),
        running_requests=parse_spec("trtllm_num_requests_running"),
        kv_usage=parse_spec("trtllm_kv_cache_utilization"),
        cache_block_size=parse_spec("trtllm_kv_cache_tokens_per_block"),
        cache_num_blocks=parse_spec("trtllm_kv_cache_max_blocks"),
    ),
    "triton-tensorrt-llm": EngineConfig(
        name="triton-tensorrt-llm",
        queued_requests=parse_spec("nv_trt_llm_request_metrics{request_type=waiting}"),
        running_requests=parse_spec("nv_trt_llm_request_metrics{request_type=scheduled}"),
        kv_usage=parse_spec("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}"),
        cache_block_size=parse_spec("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=tokens_per}"),
        cache_num_blocks=parse_spec("nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}"),
    ),
}

MAX_SERVED_MODELS = 32  # a server listing thousands of names must not make them all "known"

# Parser input per engine, computed once: the scraper looks this up on every scrape.
WANTED: dict[str, frozenset[str]] = {name: cfg.wanted() for name, cfg in ENGINES.items()}


def engine_config(engine: str | None) -> EngineConfig:
    """The mapping for `engine` ("" / None -> default); raises KeyError for an unknown name."""
    return ENGINES[engine or DEFAULT_ENGINE]


def _latest(spec: MetricSpec, families: Families) -> Sample | None:
    """Largest timestamp among matching samples; ties (incl. no timestamps) -> first."""
    best: Sample | None = None
    best_ts = 0
    for s in families.get(spec.name, ()):
        if not spec.matches(s):
            continue
        ts = s.timestamp_ms or 0
        if best is None or ts > best_ts:
            best, best_ts = s, ts
    return best


def _largest_value(spec: MetricSpec, families: Families) -> Sample | None:
    best: Sample | None = None
    for s in families.get(spec.name, ()):
        if spec.matches(s) and (best is None or s.value > best.value):
            best = s
    return best


def _adapters(label: str | None) -> frozenset[str]:
    if not label:
        return frozenset()
    return frozenset(a for a in (p.strip() for p in label.split(",")) if a)


def _int_label(sample: Sample, label: str) -> int:
    raw = sample.labels.get(label)
    if raw is None:
        raise ValueError(f"label {label!r} missing")
    return int(raw.strip())


def extract(engine: str | EngineConfig | None, families: Families) -> tuple[dict[str, Any], list[str]]:
    """Map parsed families to `EndpointMetrics` field values.

    Returns (fields found, errors). Fields not found are simply absent from the dict; the
    caller keeps their previous values. Never raises on bad data.
    """
    errors: list[str] = []
    if isinstance(engine, EngineConfig):
        cfg = engine
    else:
        found = ENGINES.get(engine or DEFAULT_ENGINE)
        if found is None:
            errors.append(f"unknown engine {engine!r}, using {DEFAULT_ENGINE}")
            found = ENGINES[DEFAULT_ENGINE]
        cfg = found
    fields: dict[str, Any] = {}

    def number(spec: MetricSpec | None, field: str, kind: type, required: bool = True) -> None:
        if spec is None:
            return
        s = _latest(spec, families)
        if s is None:
            if required:
                errors.append(f"{field}: metric {spec} not found")
            return
        if not math.isfinite(s.value):
            errors.append(f"{field}: metric {spec} has non-finite value {s.value}")
            return
        fields[field] = kind(s.value)

    number(cfg.queued_requests, "waiting_queue_size", int)
    if cfg.queued_requests is not None:
        # The served model names (vLLM and SGLang label every series with model_name): which
        # names are real, so metric labels can be kept to those (observability/modellabels.py).
        names = {
            s.labels["model_name"] for s in families.get(cfg.queued_requests.name, ()) if s.labels.get("model_name")
        }
        served = frozenset(sorted(names)[:MAX_SERVED_MODELS])
        if served:
            fields["served_models"] = served
    number(cfg.running_requests, "running_requests_size", int)
    number(cfg.kv_usage, "kv_cache_usage_percent", float)
    number(cfg.cache_block_size, "cache_block_size", int)
    number(cfg.cache_num_blocks, "cache_num_blocks", int)
    number(cfg.prefix_cache_queries, "prefix_cache_queries", float, required=False)
    number(cfg.prefix_cache_hits, "prefix_cache_hits", float, required=False)

    if cfg.lora is not None:
        s = _largest_value(cfg.lora, families)
        if s is None:
            errors.append(f"lora: metric {cfg.lora} not found")
        else:
            fields["active_models"] = _adapters(s.labels.get("running_lora_adapters"))
            fields["waiting_models"] = _adapters(s.labels.get("waiting_lora_adapters"))
            try:
                fields["max_active_models"] = _int_label(s, "max_lora")
            except ValueError as e:
                errors.append(f"lora: metric {cfg.lora}: {e}")

    if cfg.cache_info is not None:
        s = _latest(cfg.cache_info, families)
        if s is None:
            errors.append(f"cache info: metric {cfg.cache_info} not found")
        else:
            for label, field in (
                (cfg.cache_block_size_label, "cache_block_size"),
                (cfg.cache_num_blocks_label, "cache_num_blocks"),
            ):
                if not label:
                    continue
                try:
                    fields[field] = _int_label(s, label)
                except ValueError as e:
                    # vLLM reports num_gpu_blocks="None" until profiling has run.
                    errors.append(f"cache info: metric {cfg.cache_info}: {e}")
    return fields, errors

"""Plugin types a reference config may name that carry no scheduling logic here.

They are accepted so existing EndpointPickerConfig files load unchanged; their behaviour lives
in the data layer (scraping), flow control (saturation) and request parsing.
"""

from __future__ import annotations

from pydantic import Field

from epp.scheduling.plugin import Params, Plugin, register


class MetricsDataSourceParams(Params):
    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = Field(True, alias="insecureSkipVerify")


@register
class MetricsDataSource(Plugin):
    type_name = "metrics-data-source"
    Params = MetricsDataSourceParams


class EngineConfig(Params):
    name: str
    queued_requests_spec: str = Field("", alias="queuedRequestsSpec")
    running_requests_spec: str = Field("", alias="runningRequestsSpec")
    kv_usage_spec: str = Field("", alias="kvUsageSpec")
    lora_spec: str = Field("", alias="loraSpec")
    cache_info_spec: str = Field("", alias="cacheInfoSpec")
    cache_block_size_label_name: str = Field("", alias="cacheBlockSizeLabelName")
    cache_num_blocks_label_name: str = Field("", alias="cacheNumBlocksLabelName")
    cache_block_size_spec: str = Field("", alias="cacheBlockSizeSpec")
    cache_num_blocks_spec: str = Field("", alias="cacheNumBlocksSpec")


class CoreMetricsExtractorParams(Params):
    engine_label_key: str = Field("inference.networking.k8s.io/engine-type", alias="engineLabelKey")
    default_engine: str = Field("vllm", alias="defaultEngine")
    engine_configs: list[EngineConfig] = Field(default_factory=list, alias="engineConfigs")


@register
class CoreMetricsExtractor(Plugin):
    type_name = "core-metrics-extractor"
    Params = CoreMetricsExtractorParams


@register
class OpenAIParser(Plugin):
    type_name = "openai-parser"


@register
class PassthroughParser(Plugin):
    type_name = "passthrough-parser"


class InflightLoadParams(Params):
    pass


@register
class InflightLoadProducer(Plugin):
    """The EPP always counts in-flight load per endpoint; this name exists for config compatibility."""

    type_name = "inflight-load-producer"
    Params = InflightLoadParams


def passive_types() -> set[str]:
    return {
        "metrics-data-source",
        "core-metrics-extractor",
        "openai-parser",
        "passthrough-parser",
        "inflight-load-producer",
    }

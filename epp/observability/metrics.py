"""Prometheus metrics with the reference EPP's names, labels and buckets (gie-epp.md §6).

One registry per process (not the global default) so tests can start several EPPs side by side.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_DURATION_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
_REQUEST_SIZE_BUCKETS = tuple(float(2**i) for i in range(6, 31))  # 64 .. 1 GiB
# The upstream typo 32778 is kept on purpose: dashboards and hermetic tests expect le="32778".
_RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
_INPUT_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)
_OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_SCHED_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
_HIT_RATIO_BUCKETS = tuple(round(i * 0.1, 1) for i in range(11))
_HIT_BYTES_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

_OBJ = ("model_name", "target_model_name")


class ObjectiveSeries:
    """The labelled children one (model, target model) pair uses per request, looked up once.

    `labels()` costs a few microseconds per call; a request touches about a dozen series.
    """

    __slots__ = (
        "input_tokens",
        "ntpot",
        "output_tokens",
        "prompt_cached_tokens",
        "request_duration",
        "request_sizes",
        "response_sizes",
        "running",
    )

    def __init__(self, m: EppMetrics, model: str, target: str) -> None:
        self.request_sizes = m.request_sizes.labels(model, target)
        self.request_duration = m.request_duration.labels(model, target)
        self.response_sizes = m.response_sizes.labels(model, target)
        self.input_tokens = m.input_tokens.labels(model, target)
        self.output_tokens = m.output_tokens.labels(model, target)
        self.prompt_cached_tokens = m.prompt_cached_tokens.labels(model, target)
        self.ntpot = m.ntpot.labels(model, target)
        self.running = m.running_requests.labels(model)


class EppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes...: what the EPP itself costs
        # (of the decision process; ext_proc workers are processes of their own).
        ProcessCollector(registry=r)
        self.request_total = Counter(
            "inference_objective_request", "Requests successfully scheduled.", (*_OBJ, "priority"), registry=r
        )
        self.request_error_total = Counter(
            "inference_objective_request_error", "Requests that ended in an error.", (*_OBJ, "error_code"), registry=r
        )
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            "Request headers received to response complete.",
            _OBJ,
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            "Request body size in bytes.",
            _OBJ,
            buckets=_REQUEST_SIZE_BUCKETS,
            registry=r,
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            "Response body size in bytes.",
            _OBJ,
            buckets=_RESPONSE_SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            "Prompt tokens per request.",
            _OBJ,
            buckets=_INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            "Completion tokens per request.",
            _OBJ,
            buckets=_OUTPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens",
            "Cached prompt tokens per request.",
            _OBJ,
            buckets=_INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests", "Requests in flight.", ("model_name",), registry=r
        )
        self.ntpot = Histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            "Duration / completion tokens.",
            _OBJ,
            buckets=_NTPOT_BUCKETS,
            registry=r,
        )

        self.pool_avg_kv = Gauge(
            "inference_pool_average_kv_cache_utilization", "Mean KV use over fresh endpoints.", ("name",), registry=r
        )
        self.pool_avg_queue = Gauge(
            "inference_pool_average_queue_size", "Mean waiting queue over fresh endpoints.", ("name",), registry=r
        )
        self.pool_avg_running = Gauge(
            "inference_pool_average_running_requests", "Mean running requests.", ("name",), registry=r
        )
        self.pool_ready_pods = Gauge(
            "inference_pool_ready_pods", "Endpoints with fresh metrics.", ("name",), registry=r
        )
        self.pool_per_pod_queue = Gauge(
            "inference_pool_per_pod_queue_size", "Waiting queue per endpoint.", ("name", "model_server_pod"), registry=r
        )

        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            "Scheduling cycle duration.",
            buckets=_SCHED_BUCKETS,
            registry=r,
        )
        self.scheduler_attempts = Counter(
            "inference_extension_scheduler_attempts",
            "Scheduling attempts.",
            ("status", "target_model_name", "pod_name", "namespace", "port"),
            registry=r,
        )
        self.plugin_duration = Histogram(
            "inference_extension_plugin_duration_seconds",
            "Plugin processing time.",
            ("extension_point", "plugin_type", "plugin_name"),
            buckets=_SCHED_BUCKETS,
            registry=r,
        )
        self.prefix_indexer_size = Gauge(
            "inference_extension_prefix_indexer_size", "Entries in the prefix index.", registry=r
        )
        self.prefix_indexer_bytes = Gauge(
            "inference_extension_prefix_indexer_memory_bytes",
            "Estimated memory held by the prefix index (epp extension).",
            registry=r,
        )
        self.prefix_hit_ratio = Histogram(
            "inference_extension_prefix_indexer_hit_ratio",
            "Matched prefix blocks / total blocks.",
            buckets=_HIT_RATIO_BUCKETS,
            registry=r,
        )
        self.prefix_hit_bytes = Histogram(
            "inference_extension_prefix_indexer_hit_bytes",
            "Matched prefix length in bytes.",
            buckets=_HIT_BYTES_BUCKETS,
            registry=r,
        )
        self.info = Gauge("inference_extension_info", "Build information.", ("commit", "build_ref"), registry=r)
        self.model_rewrite_decisions = Counter(
            "inference_extension_model_rewrite_decisions",
            "Model rewrites applied.",
            ("model_rewrite_name", "model_name", "target_model"),
            registry=r,
        )
        # epp extensions (no reference equivalent): in-flight accounting, so leaks are visible.
        self._series: dict[tuple[str, str], ObjectiveSeries] = {}

        # epp extensions: Kubernetes watches, so an API-server outage (serving last known state) is visible.
        self.kube_watch_up = Gauge(
            "epp_kubernetes_watch_up",
            "1 while the watch of a Kubernetes resource is connected.",
            ("resource",),
            registry=r,
        )
        self.kube_watch_staleness = Gauge(
            "epp_kubernetes_watch_staleness_seconds",
            "Seconds since the API server was last heard from for a resource (0 while its watch is connected).",
            ("resource",),
            registry=r,
        )
        self.kube_watch_restarts = Counter(
            "epp_kubernetes_watch_restarts",
            "Watches re-opened: expired (410), stalled, error.",
            ("resource", "reason"),
            registry=r,
        )
        self.prefill_gate_held = Gauge(
            "epp_prefill_gate_held", "Requests the prefill gate holds in the EPP right now.", registry=r
        )
        self.prefill_gate_hold = Histogram(
            "epp_prefill_gate_hold_seconds",
            "How long each held request waited before it was dispatched.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.leader = Gauge(
            "epp_leader",
            "1 while this replica may serve: it holds the leader-election lease, or runs without leader election.",
            registry=r,
        )
        self.worker_requests = Counter(
            "epp_extproc_worker_requests",
            "Requests routed for each ext_proc worker process (--workers > 1): "
            "how evenly the gateway's streams spread over the workers.",
            ("worker",),
            registry=r,
        )
        self.worker_restarts = Counter(
            "epp_extproc_worker_restarts", "ext_proc worker processes that died and were started again.", registry=r
        )
        self.scrape_interval = Gauge(
            "epp_scrape_interval_seconds",
            "Per-endpoint /metrics scrape interval in effect: "
            "--refresh-metrics-interval, stretched so the pool's scrapes stay within the CPU budget.",
            registry=r,
        )

    def series(self, model: str, target: str) -> ObjectiveSeries:
        key = (model, target)
        s = self._series.get(key)
        if s is None:
            if len(self._series) > 10_000:  # model names come from clients: bound the cache
                self._series.clear()
            s = self._series[key] = ObjectiveSeries(self, model, target)
        return s

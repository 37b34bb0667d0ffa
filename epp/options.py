"""Typed EPP options, as the CLI produces them and the runner consumes them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Options:
    grpc_port: int = 9002
    grpc_health_port: int = 9003
    metrics_port: int = 9090
    bind_address: str = "127.0.0.1"
    pool_name: str = ""
    pool_namespace: str = "default"
    pool_group: str = "inference.networking.k8s.io"
    endpoint_selector: str = ""
    endpoint_target_ports: list[int] = field(default_factory=list)
    static_endpoints: str = ""
    static_objectives: tuple[tuple[str, int], ...] = ()  # (name, priority) without Kubernetes
    disable_endpoint_subset_filter: bool = False
    refresh_metrics_interval: float = 0.05
    model_server_metrics_scheme: str = "http"  # http | https
    metrics_scraper: str = "process"  # process (scrapechild.py) | inline (on the EPP's loop)
    model_server_metrics_https_insecure_skip_verify: bool = True  # the reference's default
    refresh_prometheus_metrics_interval: float = 5.0
    metrics_staleness_threshold: float = 2.0
    config_file: str = ""
    config_text: str = ""
    config_name: str = ""  # a built-in named config (epp-default, reference-default, llm-d-affinity)
    secure_serving: bool = True
    cert_path: str = ""
    enable_cert_reload: bool = False  # re-read tls.crt/tls.key from cert_path for new connections
    health_checking: bool = False
    ha_enable_leader_election: bool = False
    ha_mode: str = "single"  # single | leader-election | active-active (docs/ha.md)
    verbosity: int = 2
    log_encoder: str = "console"
    max_request_body_bytes: int = 64 * 1024 * 1024
    kube_api_server: str = ""
    kubeconfig: str = ""
    metrics_endpoint_auth: bool | None = None  # None: enforced exactly when there is a Kubernetes API (not static)
    graceful_shutdown_timeout: float = 60.0  # SIGTERM: serve until traffic stops, at most this long
    http_picker_port: int = 0  # 0 = off; NGINX bridge contract served by the EPP itself
    workers: int = 1  # ext_proc worker processes (epp/workers/); 1 = streams served in this process
    tracing: bool = False  # --tracing: OpenTelemetry spans over OTLP (epp/observability/tracing.py)
    validate_only: bool = False  # --validate-only: load and describe the config, start nothing
    extproc_transport: str = "h2corn"  # h2corn (Rust HTTP/2, hand-written gRPC framing) | grpcio

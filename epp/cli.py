"""`epp` command line: the reference EPP's flags and defaults, Go flag syntax included.

Go's flag package accepts `-flag`, `--flag`, `-flag=value`, `--flag value`, and booleans as
`--flag` / `--flag=false`. Helm charts written for the reference pass them in all these forms.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from epp.duration import parse_duration
from epp.options import Options

_BOOL_TRUE = {"1", "t", "true", "yes", "y", "on"}
_BOOL_FALSE = {"0", "f", "false", "no", "n", "off"}

# Reference flags we accept for compatibility but that have no effect here (say so at start-up).
IGNORED_FLAGS = (
    "model-server-metrics-port",
    "model-server-metrics-path",
    "total-queued-requests-metric",
    "total-running-requests-metric",
    "kv-cache-usage-percentage-metric",
    "lora-info-metric",
    "cache-info-metric",
    "enable-pprof",
    "zap-devel",
    "zap-log-level",
    "zap-stacktrace-level",
    "zap-time-encoding",
)


def go_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in _BOOL_TRUE:
        return True
    if t in _BOOL_FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")


def duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must not be negative")
    return value


def positive_duration(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be greater than zero")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range 0-65535")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than zero")
    return value


def bind_address(text: str) -> str:
    if text.strip().lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid address {text!r} (give an IPv4 or IPv6 address: 127.0.0.1, 0.0.0.0, ::)"
        ) from None


def target_ports(text: str) -> list[int]:
    ports: list[int] = []
    for item in text.split(","):
        if item.strip():
            p = port(item.strip())
            if p not in ports:
                ports.append(p)
    if len(ports) > 8:
        raise argparse.ArgumentTypeError("at most 8 target ports are allowed")
    return ports


class _ErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, no usage dump: the message names the flag, and --help lists them all.
        self.exit(2, f"epp: error: {message} (epp --help lists the flags)\n")


def static_objectives(text: str) -> tuple[tuple[str, int], ...]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, prio = part.partition("=")
        try:
            value = int(prio)
        except ValueError:
            value = None
        if not sep or not name.strip() or value is None:
            raise argparse.ArgumentTypeError(f"{part!r}: expected name=priority with an integer priority")
        if name.strip() in out:
            raise argparse.ArgumentTypeError(f"objective {name.strip()!r} given twice")
        out[name.strip()] = value
    return tuple(out.items())


def build_parser() -> argparse.ArgumentParser:
    p = _ErrorParser(
        prog="epp", description="Endpoint Picker for LLM inference gateways (Envoy ext_proc).", allow_abbrev=False
    )
    a = p.add_argument

    def flag(name: str, default: bool, help: str) -> None:
        a(f"--{name}", type=go_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)

    a("--grpc-port", type=port, default=9002, help="ext_proc gRPC port (default 9002)")
    a("--grpc-health-port", type=port, default=9003, help="gRPC health port (default 9003)")
    a("--metrics-port", type=port, default=9090, help="Prometheus metrics port (default 9090)")
    a(
        "--bind-address",
        type=bind_address,
        default=None,
        help="address every server binds (default 127.0.0.1; 0.0.0.0 when running in a Kubernetes pod)",
    )
    a("--pool-name", default="", help="InferencePool to serve (Kubernetes mode)")
    a("--pool-namespace", default="", help="namespace of the pool (default $NAMESPACE or 'default')")
    a("--pool-group", default="inference.networking.k8s.io", help="API group of the pool")
    a("--endpoint-selector", default="", help="standalone mode: pod label selector k=v[,k=v]")
    a("--endpoint-target-ports", type=target_ports, default=[], help="standalone mode: ports, comma-separated (1-8)")
    a(
        "--static-endpoints",
        default="",
        help="no-cluster mode: host:port[@engine][,host:port[@engine]...] scraped at http://host:port/metrics",
    )
    a(
        "--static-objectives",
        type=static_objectives,
        default=(),
        help="no-cluster mode: InferenceObjectives as name=priority[,name=priority...] "
        "(what x-gateway-inference-objective names; Kubernetes mode reads the CRDs)",
    )
    flag("disable-endpoint-subset-filter", False, "ignore the data plane's subset hint")
    a(
        "--refresh-metrics-interval",
        type=positive_duration,
        default=0.05,
        help="per-endpoint scrape period (default 50ms; stretched for pools over 16 endpoints, see docs/datalayer.md)",
    )
    a(
        "--model-server-metrics-scheme",
        choices=("http", "https"),
        default="http",
        help="scheme of model-server /metrics scrapes (default http)",
    )
    a(
        "--metrics-scraper",
        choices=("process", "inline"),
        default="process",
        help="where model-server pages are fetched and parsed: process (default; a child process, so picks "
        "never wait behind a page) or inline (on the EPP's own event loop); see docs/datalayer.md",
    )
    flag(
        "model-server-metrics-https-insecure-skip-verify",
        True,
        "with https scraping, do not verify model-server certificates (default true, as the reference)",
    )
    a("--refresh-prometheus-metrics-interval", type=duration, default=5.0, help="pool gauges period (default 5s)")
    a("--metrics-staleness-threshold", type=duration, default=2.0, help="metrics older than this are stale (2s)")
    a("--config-file", default="", help="EndpointPickerConfig YAML file")
    a("--config-text", default=None, help="EndpointPickerConfig YAML text")
    a(
        "--config-name",
        default="",
        help="built-in config: epp-default (the default), reference-default (queue 2, kv 2, prefix 3), llm-d-affinity",
    )
    flag("secure-serving", True, "serve ext_proc over TLS (self-signed unless --cert-path)")
    a("--cert-path", default="", help="directory holding tls.crt and tls.key")
    flag(
        "enable-cert-reload",
        False,
        "new connections use tls.crt/tls.key as they are now (rotation without a restart; open streams keep theirs)",
    )
    a(
        "--metrics-endpoint-auth",
        type=go_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="/metrics needs a bearer token allowed to GET /metrics (TokenReview + SubjectAccessReview); "
        "default: on with Kubernetes (--pool-name/--endpoint-selector), off in static mode",
    )
    flag("health-checking", False, "also serve gRPC health on the ext_proc port")
    flag(
        "tracing",
        False,
        "OpenTelemetry traces over OTLP, configured by the OTEL_* environment (docs/tracing.md; default off)",
    )
    flag("ha-enable-leader-election", False, "leader election (Kubernetes mode)")
    a(
        "--ha-mode",
        choices=("single", "leader-election", "active-active"),
        default=None,
        help="replicas of one pool: leader-election (= --ha-enable-leader-election: one ready leader, warm "
        "standbys) or active-active (every replica ready and serving, no Lease; in-flight counts and "
        "queues are per replica, prefix state shared through KV events with epp-precise; docs/ha.md). "
        "Default: leader-election with --ha-enable-leader-election, else single",
    )
    a("--max-request-body-bytes", type=positive_int, default=64 * 1024 * 1024, help="largest request body accepted")
    a("--kube-api-server", default="", help="Kubernetes API server URL (overrides kubeconfig/in-cluster)")
    a("--kubeconfig", default="", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    a(
        "--graceful-shutdown-timeout",
        type=duration,
        default=60.0,
        help="on SIGTERM: report not ready, keep serving until no stream has been open for 2s, at most this long "
        "(default 60s; streams still open then are cut)",
    )
    a(
        "--workers",
        default="auto",
        help="ext_proc worker processes sharing the port, decisions made in one process (docs/workers.md); "
        "auto (default) = one per CPU this process may use beyond the first, at most 8 (1 on 2 CPUs); "
        "1 = everything in one process",
    )
    a(
        "--extproc-transport",
        default="h2corn",
        choices=("h2corn", "grpcio"),
        help="the ext_proc gRPC server: h2corn (default; a Rust HTTP/2 server, about a quarter of grpcio's CPU "
        "per message, needs Envoy's ext_proc_graceful_grpc_close, see docs/transport.md) or grpcio",
    )
    a("--http-picker-port", type=port, default=0, help="serve the NGINX bridge HTTP contract on this port (0 = off)")
    a("-v", "--v", dest="v", type=int, default=2, help="log verbosity (2 default, 4 debug)")
    a("--version", action="store_true", help="print the version and exit")
    a(
        "--validate-only",
        action="store_true",
        help="load the config (--config-file, --config-text or --config-name; the built-in default without one), "
        "print what it resolves to and exit: 0 when valid, 2 with the error otherwise",
    )
    a("--zap-encoder", default="console", choices=("console", "json"), help="log encoding")
    for name in IGNORED_FLAGS:
        a(
            f"--{name}",
            dest=f"ignored_{name.replace('-', '_')}",
            nargs="?",
            const="true",
            default=None,
            help=argparse.SUPPRESS,
        )
    return p


def normalize_go_args(argv: list[str]) -> list[str]:
    """`-pool-name=x` -> `--pool-name=x` (Go allows one dash for long flags); `-v=3` stays valid."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and arg[1] != "v":
            out.append("-" + arg)
        elif arg.startswith("-v=") or (arg.startswith("-v") and arg[2:].isdigit()):
            out.append("--v=" + arg[2:].lstrip("="))
        else:
            out.append(arg)
    return out


def parse_options(argv: list[str]) -> tuple[Options, list[str]]:
    """Options plus warnings to log once logging is set up."""
    parser = build_parser()
    ns = parser.parse_args(normalize_go_args(argv))
    if sum(x is not None and x != "" for x in (ns.config_file, ns.config_text, ns.config_name)) > 1:
        parser.error("--config-file, --config-text and --config-name are mutually exclusive")
    if ns.config_text is not None and not ns.config_text.strip():
        parser.error("--config-text is empty; leave it out to run the built-in default config")
    owner: dict[int, str] = {}
    for flag_name, number in (
        ("--grpc-port", ns.grpc_port),
        ("--grpc-health-port", ns.grpc_health_port),
        ("--metrics-port", ns.metrics_port),
        ("--http-picker-port", ns.http_picker_port),
    ):
        if number == 0:  # 0: any free port (or, for --http-picker-port, off)
            continue
        if number in owner:
            parser.error(f"{owner[number]} and {flag_name} are both {number}: each server needs its own port")
        owner[number] = flag_name
    modes = [bool(ns.pool_name), bool(ns.endpoint_selector), bool(ns.static_endpoints)]
    if sum(modes) > 1:
        parser.error("use exactly one of --pool-name, --endpoint-selector or --static-endpoints")
    if sum(modes) == 0 and not ns.validate_only:
        parser.error("one of --pool-name, --endpoint-selector or --static-endpoints is required")
    if ns.ha_mode == "active-active" and ns.ha_enable_leader_election:
        parser.error("--ha-mode active-active runs without leader election; drop --ha-enable-leader-election")
    if ns.ha_mode == "leader-election":
        ns.ha_enable_leader_election = True
    ns.ha_mode = ns.ha_mode or ("leader-election" if ns.ha_enable_leader_election else "single")
    if ns.ha_enable_leader_election and not (ns.pool_name or ns.endpoint_selector):
        parser.error("--ha-enable-leader-election needs Kubernetes mode (--pool-name or --endpoint-selector)")
    if ns.endpoint_selector and not ns.endpoint_target_ports:
        parser.error("--endpoint-selector needs --endpoint-target-ports")
    warnings = [
        f"flag --{n} is accepted for compatibility and has no effect"
        for n in IGNORED_FLAGS
        if getattr(ns, f"ignored_{n.replace('-', '_')}") is not None
    ]
    if ns.enable_cert_reload and not (ns.secure_serving and ns.cert_path):
        warnings.append(
            "--enable-cert-reload has no effect without --cert-path and --secure-serving "
            "(a self-signed certificate never changes)"
        )
    if ns.workers == "auto":
        from epp.workers.count import default_workers

        workers = default_workers() if ns.extproc_transport == "h2corn" else 1
    else:
        try:
            workers = int(ns.workers)
        except ValueError:
            parser.error(f"--workers {ns.workers!r}: a number of processes, or auto")
        if not 1 <= workers <= 64:
            parser.error(f"--workers {workers}: between 1 and 64")
    if workers > 1 and ns.extproc_transport == "grpcio":
        parser.error("--workers above 1 needs --extproc-transport h2corn")
    bind = ns.bind_address or ("0.0.0.0" if os.environ.get("KUBERNETES_SERVICE_HOST") else "127.0.0.1")
    opts = Options(
        grpc_port=ns.grpc_port,
        grpc_health_port=ns.grpc_health_port,
        metrics_port=ns.metrics_port,
        bind_address=bind,
        pool_name=ns.pool_name,
        pool_namespace=ns.pool_namespace or os.environ.get("NAMESPACE") or "default",
        pool_group=ns.pool_group,
        endpoint_selector=ns.endpoint_selector,
        endpoint_target_ports=ns.endpoint_target_ports,
        static_endpoints=ns.static_endpoints,
        static_objectives=ns.static_objectives,
        disable_endpoint_subset_filter=ns.disable_endpoint_subset_filter,
        refresh_metrics_interval=ns.refresh_metrics_interval,
        model_server_metrics_scheme=ns.model_server_metrics_scheme,
        metrics_scraper=ns.metrics_scraper,
        model_server_metrics_https_insecure_skip_verify=ns.model_server_metrics_https_insecure_skip_verify,
        refresh_prometheus_metrics_interval=ns.refresh_prometheus_metrics_interval,
        metrics_staleness_threshold=ns.metrics_staleness_threshold,
        config_file=ns.config_file,
        config_text=ns.config_text or "",
        config_name=ns.config_name,
        secure_serving=ns.secure_serving,
        cert_path=ns.cert_path,
        health_checking=ns.health_checking,
        ha_enable_leader_election=ns.ha_enable_leader_election,
        ha_mode=ns.ha_mode,
        verbosity=ns.v,
        log_encoder=ns.zap_encoder,
        max_request_body_bytes=ns.max_request_body_bytes,
        kube_api_server=ns.kube_api_server,
        kubeconfig=ns.kubeconfig,
        http_picker_port=ns.http_picker_port,
        graceful_shutdown_timeout=ns.graceful_shutdown_timeout,
        metrics_endpoint_auth=ns.metrics_endpoint_auth,
        enable_cert_reload=ns.enable_cert_reload,
        extproc_transport=ns.extproc_transport,
        workers=workers,
        validate_only=ns.validate_only,
        tracing=ns.tracing,
    )
    return opts, warnings


def main(argv: list[str] | None = None) -> None:
    from epp import signals

    args = sys.argv[1:] if argv is None else argv
    if "--version" in args or "-version" in args:
        from epp import __version__

        print(f"epp {__version__} (Python {sys.version.split()[0]})")
        sys.exit(0)
    signals.ignore_during_startup()
    opts, warnings = parse_options(args)
    if opts.validate_only:
        from epp.runner import validate

        sys.exit(validate(opts, warnings))
    from epp.runner import run  # heavy imports only after the flags are known to be good

    sys.exit(run(opts, warnings))


if __name__ == "__main__":
    main()

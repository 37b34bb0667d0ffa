"""Wires the EPP together and runs it until SIGTERM/SIGINT.

Hot path: gRPC servicer -> director -> scheduler (all on the event loop, no awaits in between).
Cold path: metric scrapers, pool gauges, endpoint sources (background tasks).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as extproc_grpc
from grpc_health.v1 import health_pb2_grpc

from epp import __version__, signals
from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.reachability import ReachabilityPolicy
from epp.datalayer.scrapeprocess import ProcessCollector
from epp.datalayer.scraper import CollectorBase, MetricsCollector
from epp.datalayer.static_source import parse_static_endpoints
from epp.drain import drain
from epp.extproc import tls
from epp.extproc.servicer import ExternalProcessor
from epp.extproc.tls import CertificateError
from epp.flowcontrol.admission import LegacyAdmission
from epp.flowcontrol.controller import FlowController
from epp.listen import bind_failure, host_port, why_unbindable
from epp.observability import logs
from epp.observability.flowmetrics import FlowMetrics
from epp.observability.health import HealthServicer, HealthState
from epp.observability.http import ObservabilityServer
from epp.observability.metrics import EppMetrics
from epp.observability.metricsauth import MetricsAuth, build_metrics_auth, metrics_auth_decision
from epp.observability.pool import PoolGaugeRefresher
from epp.options import Options
from epp.requestcontrol.director import Director
from epp.routing.objectives import Objective, ObjectiveStore
from epp.routing.rewrites import RewriteStore
from epp.scheduling.config import LoadedConfig, load_config
from epp.scheduling.plugin import ConfigError
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.timing import PluginTimer
from epp.sources import SourceError, SourceTargets, build_sources

log = logging.getLogger("epp")


def _holds_nothing(text: str) -> bool:
    """Empty, blank or only comments: the loader would silently take that as the defaults."""
    try:
        return yaml.safe_load(text) is None
    except yaml.YAMLError:
        return False  # the config loader reports the syntax error with its position


def read_config_file(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config-file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"--config-file {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column})"
        ) from None
    if _holds_nothing(text):
        raise ConfigError(
            f"--config-file {path}: the file holds no configuration (it is empty or only comments); "
            "leave out --config-file to run the built-in default config"
        )
    return text


def load_options_config(opts: Options) -> LoadedConfig:
    if opts.config_file:
        return load_config(read_config_file(opts.config_file), opts.config_file)
    if opts.config_text:
        if _holds_nothing(opts.config_text):
            raise ConfigError("--config-text holds no configuration (it is blank or only comments)")
        return load_config(opts.config_text, "--config-text")
    if opts.config_name:
        from epp.scheduling import configs

        try:
            return load_config(configs.text(opts.config_name), f"built-in config {opts.config_name!r}")
        except KeyError as exc:
            raise ConfigError(f"--config-name: {exc.args[0]}") from None
    return load_config(None)


def run(opts: Options, warnings: list[str]) -> int:
    logs.configure(opts.verbosity, opts.log_encoder)
    for w in warnings:
        log.warning(w)
    _enforce, auth_warning = metrics_auth_decision(opts)
    if auth_warning:
        log.warning(auth_warning)
    try:
        config = load_options_config(opts)
        endpoints = []
        if opts.static_endpoints:
            try:
                endpoints = parse_static_endpoints(opts.static_endpoints)
            except ValueError as exc:
                raise ConfigError(f"--static-endpoints: {exc}") from None
        if opts.secure_serving and opts.cert_path:
            tls.from_dir(opts.cert_path)  # a bad certificate is a config error, not a failed bind later
    except (ConfigError, CertificateError) as exc:
        return _fail(exc, 2)
    if opts.tracing:
        from epp.observability import tracing

        tracing.setup(True)
    try:
        try:
            asyncio.run(serve(opts, config, endpoints))
        finally:
            if opts.tracing:
                from epp.observability import tracing

                tracing.shutdown()  # flush what is queued
    except (SourceError, CertificateError) as exc:
        return _fail(exc, 2)
    except OSError as exc:  # BindError names the port; anything else here is a runtime failure too
        return _fail(exc, 1)
    return 0


def validate(opts: Options, warnings: list[str]) -> int:
    """--validate-only: the config and endpoint flags checked as at start-up, then described."""
    from epp.configreport import describe

    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    try:
        config = load_options_config(opts)
        if opts.static_endpoints:
            try:
                parse_static_endpoints(opts.static_endpoints)
            except ValueError as exc:
                raise ConfigError(f"--static-endpoints: {exc}") from None
    except ConfigError as exc:
        return _fail(exc, 2)
    source = opts.config_file or ("--config-text" if opts.config_text else "")
    source = source or (f"built-in {opts.config_name}" if opts.config_name else "built-in default (epp-default)")
    sys.stdout.write(describe(config, source))
    return 0


def _forget_endpoint(remove: Callable[[str], None], ep: Endpoint) -> None:
    remove(ep.name)


def _fail(exc: BaseException, code: int) -> int:
    print(f"epp: error: {exc}", file=sys.stderr)
    return code


class Epp:
    """The running EPP's parts, so tests and supervisors can reach them."""

    def __init__(self, opts: Options, config: LoadedConfig, endpoints) -> None:
        self.opts = opts
        self.config = config
        # Start-up reads top-down: the data layer, the cold-path sources that feed it, the
        # decision core that reads it, then (in start()) the workers and servers around them.
        self.metrics = EppMetrics()
        self.metrics.info.labels(__version__, "epp").set(1)
        if not opts.ha_enable_leader_election:
            self.metrics.leader.set(1)  # no election: every replica serves, as a leader would
        # -- data layer (cold path: scraping) --
        self.datastore = Datastore()
        for producer in config.producers:
            remove = getattr(producer, "remove_endpoint", None)
            if remove is not None:
                self.datastore.subscribe(on_remove=functools.partial(_forget_endpoint, remove))
        if opts.static_endpoints:
            self.datastore.replace_all(endpoints)
            self.datastore.mark_synced()
        collector_class = ProcessCollector if opts.metrics_scraper == "process" else MetricsCollector
        self.collector: CollectorBase = collector_class(
            self.datastore,
            interval=opts.refresh_metrics_interval,
            scheme=opts.model_server_metrics_scheme,
            insecure_skip_verify=opts.model_server_metrics_https_insecure_skip_verify,
            interval_gauge=self.metrics.scrape_interval,
        )
        self.health = HealthState(lambda: self.datastore.synced, opts.ha_enable_leader_election)
        # -- sources (cold path: Kubernetes watches, leader election; static mode has none) --
        objectives, rewrites = ObjectiveStore(), RewriteStore()
        for name, priority in opts.static_objectives:
            objectives.set(Objective(name, priority))
        self.sources = build_sources(
            opts, SourceTargets(config, self.datastore, objectives, rewrites, self.metrics, self.health)
        )
        # -- decision core (hot path: one pick per request) --
        self.scheduler = Scheduler(config, PluginTimer(self.metrics.plugin_duration))
        for warning in config.flow.warnings:
            log.warning("%s", warning)
        self.flow = FlowController(
            config.flow, self.datastore.endpoints, FlowMetrics(self.metrics.registry, opts.pool_name or "static")
        )
        self.director = Director(
            self.datastore,
            self.scheduler,
            self.metrics,
            LegacyAdmission(self.flow.detector),
            self.flow,
            objectives,
            rewrites,
            parser=config.parser,
            use_subset_hint=not opts.disable_endpoint_subset_filter,
            reachability=ReachabilityPolicy(scrape_interval=lambda: self.collector.effective_interval),
        )
        self.pool_gauges = PoolGaugeRefresher(
            self.datastore,
            self.metrics,
            opts.pool_name or "static",
            opts.refresh_prometheus_metrics_interval,
            opts.metrics_staleness_threshold,
            config,
            reachability=self.director.reachability,
        )
        # -- transport (set up in start(): grpcio servicer, h2corn app in process, or workers) --
        # ExternalProcessor (grpcio), GrpcApp (h2corn in process) or DecisionServer (workers).
        self.processor: Any = ExternalProcessor(self.director.exchange, opts.max_request_body_bytes)
        self._servers: list[grpc.aio.Server] = []
        self._h2servers: list = []  # H2Server, imported only when that transport runs
        self.workers: Any = None  # WorkerPool with --workers > 1 (epp.workers, imported only then)
        self.decisions: Any = None  # its DecisionServer
        self._workdir: Path | None = None
        self._unkick: Callable[[], None] | None = None
        self._ext_sock = None
        self._http: ObservabilityServer | None = None
        self.cert_reloader: tls.ReloadingCertificates | None = None
        self.http_picker: Any = None  # aiohttp AppRunner of the NGINX bridge contract, when served
        self.metrics_auth: MetricsAuth | None = None
        if metrics_auth_decision(opts)[0]:
            from epp.datalayer.kube.client import KubeConfigError

            try:
                self.metrics_auth = build_metrics_auth(opts)
            except KubeConfigError as exc:
                raise SourceError(
                    f"--metrics-endpoint-auth needs a Kubernetes API to check tokens with: {exc}"
                ) from None

    async def start(self) -> None:
        o = self.opts
        if o.extproc_transport == "grpcio":
            addr = await self._start_grpcio()
        else:
            addr = await self._start_h2corn()
        self._http = ObservabilityServer(
            self.metrics.registry, self.health, self.readiness_detail, authorize=self.metrics_auth
        )
        await self._http.start(o.bind_address, o.metrics_port)
        for server in self._servers:
            await server.start()
        for h2 in self._h2servers:
            await h2.start()
        # Room in the pool wakes flow control: a scraped page, an endpoint added or removed
        # (datastore callbacks may come from a watch thread).
        loop = asyncio.get_running_loop()
        self.collector.on_update.append(self.flow.kick)

        def kick(_ep: Endpoint) -> None:
            loop.call_soon_threadsafe(self.flow.kick)

        self._unkick = self.datastore.subscribe(on_add=kick, on_remove=kick)
        # Plugins with a cold path of their own (the KV-event ingester) follow the datastore.
        for plugin in self.config.plugins.values():
            attach = getattr(plugin, "attach", None)
            if attach is not None:
                attach(self.datastore, self.metrics.registry)
        await self.collector.start()
        self.pool_gauges.start()
        for source in self.sources:
            await source.start()
        if o.http_picker_port:
            from epp.bridge.inproc import start_http_picker

            try:
                self.http_picker = await start_http_picker(
                    self.director.exchange,
                    self.metrics.registry,
                    o.max_request_body_bytes,
                    o.bind_address,
                    o.http_picker_port,
                )
            except OSError:
                raise bind_failure(o.bind_address, o.http_picker_port, "--http-picker-port") from None
        log.info(
            "epp %s serving ext_proc on %s (%s, %s), health on %s:%d, metrics on %s:%d, %d endpoints",
            __version__,
            addr,
            "tls" if o.secure_serving else "plaintext",
            f"{o.workers} worker processes" if self.workers is not None else o.extproc_transport,
            o.bind_address,
            o.grpc_health_port,
            o.bind_address,
            o.metrics_port,
            len(self.datastore),
        )

    async def _start_grpcio(self) -> str:
        o = self.opts
        server_opts = [
            ("grpc.so_reuseport", 0),  # a second EPP on the same port must fail, not share it
            ("grpc.max_receive_message_length", o.max_request_body_bytes + (1 << 20)),
            ("grpc.max_send_message_length", o.max_request_body_bytes + (1 << 20)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
        server = grpc.aio.server(options=server_opts)
        extproc_grpc.add_ExternalProcessorServicer_to_server(self.processor, server)
        health = HealthServicer(self.health)
        if o.health_checking:
            health_pb2_grpc.add_HealthServicer_to_server(health, server)
        if o.secure_serving:
            creds, _pair, self.cert_reloader = tls.server_credentials(o.cert_path, o.enable_cert_reload)
            grpc_port = _bind_grpc(
                lambda a: server.add_secure_port(a, creds), o.bind_address, o.grpc_port, "--grpc-port"
            )
        else:
            grpc_port = _bind_grpc(server.add_insecure_port, o.bind_address, o.grpc_port, "--grpc-port")
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
        _bind_grpc(health_server.add_insecure_port, o.bind_address, o.grpc_health_port, "--grpc-health-port")
        self._servers = [server, health_server]
        return host_port(o.bind_address, grpc_port)

    async def _start_h2corn(self) -> str:
        from epp.extproc.asgi import GrpcApp
        from epp.extproc.h2server import H2Server, TlsFiles, private_files

        o = self.opts
        tls_files, watch = None, None
        if o.secure_serving:
            if o.cert_path:
                pair = tls.from_dir(o.cert_path)
                tls_files = TlsFiles(Path(o.cert_path) / "tls.crt", Path(o.cert_path) / "tls.key")
                if o.enable_cert_reload and o.workers == 1:
                    watch = self.cert_reloader = tls.ReloadingCertificates(o.cert_path, pair)
            else:
                tls_files = private_files(tls.self_signed())
        ext_sock = _bind_socket(o.bind_address, o.grpc_port, "--grpc-port", listen=o.workers == 1)
        try:
            health_sock = _bind_socket(o.bind_address, o.grpc_health_port, "--grpc-health-port")
        except BaseException:
            ext_sock.close()
            raise
        # Health answers are instant; only Watch streams stay open, and stop() ends them.
        self._h2servers = [H2Server(GrpcApp(None, 0, self.health), health_sock, drain_budget=2.0)]
        if o.workers > 1:
            await self._start_workers(ext_sock, tls_files)
        else:
            self.processor = GrpcApp(
                self.director.exchange, o.max_request_body_bytes, self.health if o.health_checking else None
            )
            self._h2servers.append(
                H2Server(self.processor, ext_sock, tls_files, watch, drain_budget=o.graceful_shutdown_timeout)
            )
        return host_port(o.bind_address, ext_sock.getsockname()[1])

    async def _start_workers(self, ext_sock, tls_files) -> None:
        """ext_proc streams in worker processes; this process makes every decision (docs/workers.md)."""
        import tempfile

        from epp.workers.decisions import DecisionServer
        from epp.workers.supervisor import WorkerPool
        from epp.workers.worker import WorkerSpec

        o = self.opts
        self._workdir = Path(tempfile.mkdtemp(prefix="epp-workers-"))
        if tls_files is not None and tls_files.private:
            # Workers started later (a restart) read the self-signed pair too: keep it while running.
            import shutil

            for f in (tls_files.certfile, tls_files.keyfile):
                shutil.move(f, self._workdir / f.name)
            shutil.rmtree(tls_files.certfile.parent, ignore_errors=True)
            tls_files = type(tls_files)(self._workdir / "tls.crt", self._workdir / "tls.key")
        self.decisions = DecisionServer(self.director, self.health)
        await self.decisions.start(str(self._workdir / "decisions.sock"))
        self.processor = self.decisions
        self._ext_sock = ext_sock
        spec = WorkerSpec(
            index=0,
            host=o.bind_address,
            port=ext_sock.getsockname()[1],
            decisions=str(self._workdir / "decisions.sock"),
            max_body=o.max_request_body_bytes,
            health_checking=o.health_checking,
            certfile=str(tls_files.certfile) if tls_files else "",
            keyfile=str(tls_files.keyfile) if tls_files else "",
            cert_path=o.cert_path,
            cert_reload=o.enable_cert_reload,
            drain_budget=o.graceful_shutdown_timeout,
            verbosity=o.verbosity,
            log_encoder=o.log_encoder,
        )
        self.workers = WorkerPool(o.workers, spec, self.decisions, on_restart=self.metrics.worker_restarts.inc)
        await self.workers.start()

    def readiness_detail(self) -> str:
        parts = [f"{len(self.datastore)} endpoints", "synced" if self.datastore.synced else "not synced"]
        if self.health.draining:
            parts.append("draining (shutting down)")
        if self.health.leader_election:
            parts.append("leader" if self.health.is_leader else "follower")
        elif self.opts.ha_mode == "active-active":
            parts.append("active-active")
        for source in self.sources:
            detail = getattr(source, "detail", None)
            if detail is not None:
                parts.append(detail())
        return "; ".join(parts)

    async def stop(self, grace: float = 5.0) -> None:
        self.flow.close()  # waiting requests are answered while the servers still drain
        if self._unkick is not None:
            self._unkick()
        if self.http_picker is not None:
            await self.http_picker.cleanup()
        for source in reversed(self.sources):
            await source.stop()
        await self.pool_gauges.stop()
        await self.collector.stop()
        if self.workers is not None:
            await self.workers.stop(grace)
        if self.decisions is not None:
            await self.decisions.stop()
        if self._ext_sock is not None:
            self._ext_sock.close()
        if self._workdir is not None:
            import shutil

            shutil.rmtree(self._workdir, ignore_errors=True)
        await asyncio.gather(*(s.stop(grace) for s in self._servers), *(s.stop(grace) for s in self._h2servers))
        self.director.body_parser.close()
        for plugin in self.config.plugins.values():
            close = getattr(plugin, "close", None)
            if close is not None and asyncio.iscoroutinefunction(close):
                try:
                    await close()
                except Exception:
                    log.exception("closing plugin %s failed", plugin.name)
        if self._http is not None:
            await self._http.stop()
        if self.metrics_auth is not None:
            self.metrics_auth.close()


def _bind_socket(addr: str, port: int, flag: str, listen: bool = True):
    """The listening socket, or with `listen=False` the port held for worker processes (a bound
    SO_REUSEPORT socket that accepts nothing: workers listen on their own sockets in its group)."""
    from epp.extproc.h2server import listening_socket

    reason = why_unbindable(addr, port)
    if reason is not None:
        raise bind_failure(addr, port, flag, reason)
    try:
        return listening_socket(addr, port, reuse_port=not listen, listen=listen)
    except OSError:
        raise bind_failure(addr, port, flag) from None


def _bind_grpc(add_port, addr: str, port: int, flag: str) -> int:
    reason = why_unbindable(addr, port)
    if reason is not None:
        raise bind_failure(addr, port, flag, reason)
    try:
        bound = add_port(host_port(addr, port))
    except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
        bound = 0
    if bound == 0:
        raise bind_failure(addr, port, flag)
    return bound


async def serve(opts: Options, config: LoadedConfig, endpoints) -> None:
    epp = Epp(opts, config, endpoints)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_stop(sig) -> None:
        if stop.is_set():
            hurry.set()  # a second SIGTERM/SIGINT: do not wait for the drain
        stop.set()

    signals.install(asyncio.get_running_loop(), on_stop)
    try:
        await epp.start()
    except BaseException:
        await epp.stop(grace=0)  # what did start (ports, tasks) closes cleanly before the one-line error
        raise
    print(f"epp ready: ext_proc {opts.bind_address}:{opts.grpc_port}", flush=True)
    await stop.wait()
    grace = await drain(epp.health, epp.processor, opts.graceful_shutdown_timeout, hurry)
    log.info("shutting down")
    await epp.stop(grace=grace)

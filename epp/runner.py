"""Wires the EPP together and runs it until SIGTERM/SIGINT.

Hot path: gRPC servicer -> director -> scheduler (all on the event loop, no awaits in between).
Cold path: metric scrapers, pool gauges, endpoint sources (background tasks).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as extproc_grpc
from grpc_health.v1 import health_pb2_grpc

from epp import __version__
from epp.datalayer.datastore import Datastore
from epp.datalayer.scraper import MetricsCollector
from epp.datalayer.static_source import parse_static_endpoints
from epp.extproc import tls
from epp.extproc.servicer import ExternalProcessor
from epp.flowcontrol.admission import LegacyAdmission
from epp.flowcontrol.saturation import UtilizationDetector
from epp.observability import logs
from epp.observability.health import HealthServicer, HealthState
from epp.observability.http import ObservabilityServer
from epp.observability.metrics import EppMetrics
from epp.observability.pool import PoolGaugeRefresher
from epp.options import Options
from epp.sources import SourceError, build_sources
from epp.requestcontrol.director import Director
from epp.scheduling.config import LoadedConfig, load_config
from epp.scheduling.plugin import ConfigError
from epp.scheduling.plugins.filters import UtilizationDetector as UtilizationDetectorPlugin
from epp.scheduling.scheduler import Scheduler
from epp.duration import parse_duration

log = logging.getLogger("epp")


def load_options_config(opts: Options) -> LoadedConfig:
    if opts.config_file:
        try:
            text = Path(opts.config_file).read_text()
        except OSError as exc:
            raise ConfigError(f"--config-file {opts.config_file}: {exc.strerror}") from None
        return load_config(text, opts.config_file)
    if opts.config_text:
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
    try:
        config = load_options_config(opts)
    except ConfigError as exc:
        print(f"epp: error: {exc}", file=sys.stderr)
        return 2
    endpoints = []
    if opts.static_endpoints:
        try:
            endpoints = parse_static_endpoints(opts.static_endpoints)
        except ValueError as exc:
            print(f"epp: error: --static-endpoints: {exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(serve(opts, config, endpoints))
    except SourceError as exc:
        print(f"epp: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"epp: error: {exc}", file=sys.stderr)
        return 1
    return 0


def detector_from_config(config: LoadedConfig) -> UtilizationDetector:
    plugins = config.plugins_of(UtilizationDetectorPlugin)
    if not plugins:
        return UtilizationDetector()
    p = plugins[0].params
    return UtilizationDetector(p.queue_depth_threshold, p.kv_cache_util_threshold,
                               parse_duration(p.metrics_staleness_threshold))


class Epp:
    """The running EPP's parts, so tests and supervisors can reach them."""

    def __init__(self, opts: Options, config: LoadedConfig, endpoints) -> None:
        self.opts = opts
        self.config = config
        self.metrics = EppMetrics()
        self.metrics.info.labels(__version__, "epp").set(1)
        self.datastore = Datastore()
        for producer in config.producers:
            remove = getattr(producer, "remove_endpoint", None)
            if remove is not None:
                self.datastore.subscribe(on_remove=lambda ep, r=remove: r(ep.name))
        if opts.static_endpoints:
            self.datastore.replace_all(endpoints)
            self.datastore.mark_synced()
        self.collector = MetricsCollector(
            self.datastore, interval=opts.refresh_metrics_interval, scheme=opts.model_server_metrics_scheme,
            insecure_skip_verify=opts.model_server_metrics_https_insecure_skip_verify,
            interval_gauge=self.metrics.scrape_interval)
        self.scheduler = Scheduler(config)
        self.director = Director(self.datastore, self.scheduler, self.metrics,
                                 LegacyAdmission(detector_from_config(config)), parser=config.parser,
                                 use_subset_hint=not opts.disable_endpoint_subset_filter)
        self.health = HealthState(lambda: self.datastore.synced, opts.ha_enable_leader_election)
        self.pool_gauges = PoolGaugeRefresher(self.datastore, self.metrics, opts.pool_name or "static",
                                              opts.refresh_prometheus_metrics_interval,
                                              opts.metrics_staleness_threshold, config)
        self.processor = ExternalProcessor(self.director.exchange, opts.max_request_body_bytes)
        self._servers: list[grpc.aio.Server] = []
        self._http = None
        # Cold-path producers of endpoints/objectives/rewrites (Kubernetes); static mode has none.
        self.sources = build_sources(opts, self)
        self.http_picker = None

    async def start(self) -> None:
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
        addr = f"{o.bind_address}:{o.grpc_port}"
        if o.secure_serving:
            key, cert = tls.from_dir(o.cert_path) if o.cert_path else tls.self_signed()
            creds = grpc.ssl_server_credentials([(key, cert)])
            bound = server.add_secure_port(addr, creds)
        else:
            bound = server.add_insecure_port(addr)
        if bound == 0:
            raise OSError(f"cannot listen on {addr}")
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
        if health_server.add_insecure_port(f"{o.bind_address}:{o.grpc_health_port}") == 0:
            raise OSError(f"cannot listen on {o.bind_address}:{o.grpc_health_port}")
        await server.start()
        await health_server.start()
        self._servers = [server, health_server]
        self._http = ObservabilityServer(self.metrics.registry, self.health, self.readiness_detail)
        await self._http.start(o.bind_address, o.metrics_port)
        await self.collector.start()
        self.pool_gauges.start()
        for source in self.sources:
            await source.start()
        if o.http_picker_port:
            from epp.bridge.inproc import start_http_picker

            self.http_picker = await start_http_picker(self, o.bind_address, o.http_picker_port)
        log.info("epp %s serving ext_proc on %s (%s), health on %s:%d, metrics on %s:%d, %d endpoints",
                 __version__, addr, "tls" if o.secure_serving else "plaintext", o.bind_address,
                 o.grpc_health_port, o.bind_address, o.metrics_port, len(self.datastore))

    def readiness_detail(self) -> str:
        parts = [f"{len(self.datastore)} endpoints", "synced" if self.datastore.synced else "not synced"]
        if self.health.leader_election:
            parts.append("leader" if self.health.is_leader else "follower")
        for source in self.sources:
            detail = getattr(source, "detail", None)
            if detail is not None:
                parts.append(detail())
        return "; ".join(parts)

    async def stop(self, grace: float = 5.0) -> None:
        if self.http_picker is not None:
            await self.http_picker.cleanup()
        for source in reversed(self.sources):
            await source.stop()
        await self.pool_gauges.stop()
        await self.collector.stop()
        await asyncio.gather(*(s.stop(grace) for s in self._servers))
        if self._http is not None:
            await self._http.stop()


async def serve(opts: Options, config: LoadedConfig, endpoints) -> None:
    epp = Epp(opts, config, endpoints)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await epp.start()
    print(f"epp ready: ext_proc {opts.bind_address}:{opts.grpc_port}", flush=True)
    await stop.wait()
    log.info("shutting down")
    await epp.stop()

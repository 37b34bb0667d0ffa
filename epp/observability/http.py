"""The metrics port: Prometheus on /metrics, plus /healthz and /readyz with a readable detail.

gRPC health (the reference's probes) can only say SERVING or NOT_SERVING; an operator looking
at an API-server outage or a lost election wants to read why, so /readyz says it in text.
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from epp.observability.health import SERVING, HealthState


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not hold up shutdown


def observability_app(registry: CollectorRegistry, health: HealthState, detail: Callable[[], str]):
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            ready = health.status("readiness") == SERVING
            text = ("ready" if ready else "not ready") + "; " + detail() + "\n"
            start_response("200 OK" if ready else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [text.encode()]
        return metrics(environ, start_response)

    return app


def start_observability_server(port: int, addr: str, registry: CollectorRegistry, health: HealthState,
                               detail: Callable[[], str]) -> WSGIServer:
    server = make_server(addr, port, observability_app(registry, health, detail), _Server, _Quiet)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server

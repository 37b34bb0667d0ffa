"""The NGINX picker contract served by the EPP itself (`epp --http-picker-port`): no sidecar, no gRPC hop.

Same HTTP contract as `epp-bridge` (X-EPP-Host/Port are accepted and ignored), but the pick
calls the director directly on the EPP's event loop.

In-flight accounting: NGINX never tells the picker when the proxied request ends, so each
pick's in-flight load is released as soon as the answer is built (`Exchange.finish(completed=
False)`), exactly as the ext_proc path does when a gateway (NGF's shim, `epp-bridge`) ends the
stream without a response phase. The counters therefore only ever hold picks in progress and
cannot leak; load-aware scorers rely on the model servers' scraped metrics (queue depth, KV
cache, running requests) on this path, as the reference EPP does everywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from epp.bridge import contract
from epp.bridge.contract import Cause, PickOutcome
from epp.bridge.metrics import BridgeMetrics
from epp.bridge.server import respond
from epp.errors import EppError
from epp.requestcontrol.director import Exchange
from epp.requestcontrol.exchange import IncomingRequest

log = logging.getLogger("epp.bridge.inproc")


class InprocHandler:
    def __init__(self, new_exchange: Callable[[], Exchange], max_body: int, metrics: BridgeMetrics) -> None:
        self.new_exchange, self.max_body, self.metrics = new_exchange, max_body, metrics

    async def __call__(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            outcome = PickOutcome.failed(Cause.TOO_LARGE, f"request body larger than {self.max_body} bytes")
        else:
            headers = contract.request_headers(list(request.headers.items()), request.method, request.path_qs)
            outcome = self.pick(IncomingRequest(headers, body))
        self.metrics.observe(outcome, time.perf_counter() - t0)
        return respond(outcome)

    def pick(self, req: IncomingRequest) -> PickOutcome:
        """Synchronous on purpose: no await between the pick and its accounting, like the ext_proc path."""
        exchange = self.new_exchange()
        try:
            # No response phase tells us when a prefill ends, so nothing is held on this path.
            decision = exchange.route(req, may_hold=False) if req.body else exchange.route_headers_only(req)
            assert decision is not None
            return PickOutcome.picked(decision.destination)
        except EppError as err:
            return PickOutcome.immediate(err.http_status, err.body)
        except Exception:
            log.exception("internal error while picking")
            return PickOutcome.failed(Cause.INTERNAL, "internal picker error")
        finally:
            # No response phase will ever come back through NGINX: release now (see module doc).
            exchange.finish(completed=False)


async def start_http_picker(
    new_exchange: Callable[[], Exchange], registry: CollectorRegistry, max_body: int, host: str, port: int
) -> web.AppRunner:
    metrics = BridgeMetrics(registry, mode="inproc")
    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", InprocHandler(new_exchange, max_body, metrics))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    log.info("NGINX picker contract on http://%s:%d", host, port)
    return runner

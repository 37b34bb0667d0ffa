"""`epp-bridge`'s HTTP side: NGF's shim contract served with aiohttp, picks made over ext_proc."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiohttp import web

from epp.bridge import contract
from epp.bridge.channels import ChannelPool
from epp.bridge.contract import Cause, PickOutcome
from epp.bridge.extproc_client import pick
from epp.bridge.metrics import BridgeMetrics

log = logging.getLogger("epp.bridge")


@dataclass
class BridgeConfig:
    timeout: float = 5.0  # must stay below NGINX's js_fetch_timeout, or NGINX gives up first
    max_body: int = 64 * 1024 * 1024


def respond(outcome: PickOutcome) -> web.Response:
    return web.Response(status=outcome.status, body=outcome.body, headers=outcome.headers())


def epp_address(request: web.Request) -> tuple[str, int] | PickOutcome:
    host = request.headers.get(contract.EPP_HOST, "").strip()
    port_text = request.headers.get(contract.EPP_PORT, "").strip()
    if not host or not port_text:
        return PickOutcome.failed(Cause.MISSING_HEADERS, contract.MISSING_EPP_HEADERS)
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        return PickOutcome.failed(Cause.BAD_REQUEST, f"invalid X-EPP-Port: {port_text!r}")
    return host.strip("[]"), port


class BridgeHandler:
    def __init__(self, pool: ChannelPool, metrics: BridgeMetrics, config: BridgeConfig) -> None:
        self.pool, self.metrics, self.config = pool, metrics, config

    async def __call__(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        outcome = await self._pick(request)
        self.metrics.observe(outcome, time.perf_counter() - t0)
        if outcome.cause not in (None, Cause.IMMEDIATE):
            log.warning("pick failed (%s): %s", outcome.cause.value, outcome.body.decode(errors="replace"))
        return respond(outcome)

    async def _pick(self, request: web.Request) -> PickOutcome:
        addr = epp_address(request)
        if isinstance(addr, PickOutcome):
            return addr
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return PickOutcome.failed(Cause.TOO_LARGE, f"request body larger than {self.config.max_body} bytes")
        headers = contract.request_headers(list(request.headers.items()), request.method, request.path_qs)
        try:
            channel = await self.pool.get(*addr)
            self.metrics.channels.labels(self.metrics.mode).set(len(self.pool))
            return await pick(channel, headers, body, self.config.timeout, f"EPP {addr[0]}:{addr[1]}")
        except Exception:  # a bridge bug must answer NGINX, not hang it until js_fetch_timeout
            log.exception("internal error while picking")
            return PickOutcome.failed(Cause.INTERNAL, "internal bridge error")


def build_app(pool: ChannelPool, metrics: BridgeMetrics, config: BridgeConfig) -> web.Application:
    app = web.Application(client_max_size=config.max_body)
    app.router.add_route("*", "/{tail:.*}", BridgeHandler(pool, metrics, config))

    async def close_pool(_: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close_pool)
    return app


async def start(host: str, port: int, pool: ChannelPool, metrics: BridgeMetrics, config: BridgeConfig) -> web.AppRunner:
    runner = web.AppRunner(build_app(pool, metrics, config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner

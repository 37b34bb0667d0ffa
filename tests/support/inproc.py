"""An EPP running inside the test's event loop (real gRPC server, real sockets)."""

from __future__ import annotations

import contextlib

import grpc

from epp.datalayer.endpoint import Endpoint
from epp.options import Options
from epp.runner import Epp
from epp.scheduling.config import load_config
from epp.stack.processes import free_port


@contextlib.asynccontextmanager
async def running_epp(endpoints: list[Endpoint], config_text: str | None = None, **opts):
    o = Options(
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        secure_serving=False,
        static_endpoints="x",
        refresh_metrics_interval=3600,
        **opts,
    )
    async with serving(Epp(o, load_config(config_text), endpoints)) as running:
        yield running


@contextlib.asynccontextmanager
async def serving(epp: Epp):
    """Start a configured Epp and yield it with a plaintext channel to its ext_proc port."""
    await epp.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{epp.opts.grpc_port}")
    try:
        yield epp, channel
    finally:
        await channel.close()
        await epp.stop(grace=0.5)

"""`epp-bridge`: NGF's endpoint-picker shim contract over HTTP, to any EPP over ext_proc gRPC.

NGINX (NJS `ngx.fetch`) -> epp-bridge (HTTP, 127.0.0.1:54800) -> EPP (ext_proc gRPC) and back
with `X-Gateway-Destination-Endpoint`. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from prometheus_client import start_http_server

from epp.bridge import server
from epp.bridge.channels import ChannelPool, TlsMode
from epp.bridge.metrics import BridgeMetrics

log = logging.getLogger("epp.bridge")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="epp-bridge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: NGINX is local)")
    p.add_argument("--port", type=int, default=54800, help="listen port (NGF's epp.js hard-codes 54800)")
    p.add_argument("--metrics-port", type=int, default=54801, help="Prometheus /metrics port (0 = off)")
    tls = p.add_mutually_exclusive_group()
    # NGF's flag names are accepted too, so the shim container's arguments carry over unchanged.
    tls.add_argument(
        "--plaintext", "--endpoint-picker-disable-tls", action="store_true", help="talk to the EPP without TLS"
    )
    tls.add_argument(
        "--ca-file",
        default="",
        help="verify the EPP's certificate against this CA bundle "
        "(default: TLS without verification, like the gateways)",
    )
    p.add_argument("--endpoint-picker-tls-skip-verify", default="true", help=argparse.SUPPRESS)
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the EPP's pick (keep below NGINX's js_fetch_timeout)",
    )
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024, help="largest request body accepted")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def tls_mode(args: argparse.Namespace) -> TlsMode:
    if args.plaintext:
        return TlsMode.PLAINTEXT
    if args.ca_file:
        return TlsMode.VERIFY
    return TlsMode.INSECURE


async def serve(args: argparse.Namespace) -> None:
    metrics = BridgeMetrics()
    pool = ChannelPool(tls_mode(args), args.ca_file)
    config = server.BridgeConfig(timeout=args.timeout, max_body=args.max_body_bytes)
    runner = await server.start(args.host, args.port, pool, metrics, config)
    http = None
    if args.metrics_port:
        http, _ = start_http_server(args.metrics_port, addr=args.host, registry=metrics.registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"epp-bridge ready: http://{args.host}:{args.port} ({tls_mode(args).value} to EPPs)", flush=True)
    await stop.wait()
    await runner.cleanup()
    if http is not None:
        http.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.timeout <= 0:
        sys.exit("epp-bridge: --timeout must be positive")
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        sys.exit(f"epp-bridge: {exc}")


if __name__ == "__main__":
    main()

"""`python -m epp.bridge.bench`: what picking adds to NGINX, nginx alone vs nginx + NJS + picker + EPP.

Backend: nginx answering a fixed completion (with a vLLM /metrics page for the EPP to scrape),
so the backend is never the bottleneck. Gateways: a plain nginx proxy (the baseline), and
deploy/nginx (NJS -> picker -> proxy) with the picker being epp-bridge (ext_proc over TLS to
the EPP) or the EPP's own HTTP picker port. Load: wrk, one thread, POST /v1/completions.
Bounded: (1 s warm-up + --seconds) per point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from epp.bench import wrk
from epp.bench.overhead import body_of_size, start_nginx
from epp.bridge import nginxconf
from epp.stack.processes import Proc, bin_path, free_port, wait_port

PLAIN_PROXY = """
load_module /usr/lib/nginx/modules/ngx_http_js_module.so;
daemon off;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path client_body_temp;
  proxy_temp_path proxy_temp;
  fastcgi_temp_path fastcgi_temp;
  uwsgi_temp_path uwsgi_temp;
  scgi_temp_path scgi_temp;
  upstream pool {{ server 127.0.0.1:{backend}; }}
  server {{
    listen 127.0.0.1:{port};
    client_body_buffer_size 16m;
    client_max_body_size 16m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    location / {{ proxy_pass http://pool$request_uri; }}
  }}
}}
"""


@dataclass
class Point:
    setup: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _nginx(prefix: Path, conf: str, port: int, procs: list[Proc]) -> None:
    prefix.mkdir(parents=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(user + conf)
    p = Proc("nginx", nginxconf.command(prefix), prefix / "nginx.out").start()
    procs.append(p)
    wait_port(port, proc=p.popen)


def run(seconds: float, connections: list[int], body_bytes: int) -> list[Point]:
    if not wrk.wrk_available() or shutil.which("nginx") is None:
        raise SystemExit("needs nginx and wrk (make install)")
    work = Path(tempfile.mkdtemp(prefix="epp-nginx-bench-"))
    procs: list[Proc] = []
    try:
        backend = start_nginx(work, procs)
        gateways: dict[str, int] = {}

        port = free_port()
        _nginx(work / "plain", PLAIN_PROXY.format(backend=backend, port=port), port, procs)
        gateways["nginx alone"] = port

        # One EPP serves TLS ext_proc and the HTTP picker port; a second one plaintext ext_proc.
        grpc_port, plain_port, picker_port = free_port(), free_port(), free_port()
        for port, extra in [
            (grpc_port, ["--http-picker-port", str(picker_port)]),
            (plain_port, ["--secure-serving=false"]),
        ]:
            epp = Proc(
                "epp",
                [
                    bin_path("epp"),
                    "--static-endpoints",
                    f"127.0.0.1:{backend}",
                    "--grpc-port",
                    str(port),
                    "--grpc-health-port",
                    str(free_port()),
                    "--metrics-port",
                    str(free_port()),
                    "-v=1",
                    *extra,
                ],
                work / f"epp-{port}.log",
            ).start()
            procs.append(epp)
            wait_port(port, proc=epp.popen)
        wait_port(picker_port, proc=epp.popen)
        bridges = {}
        for mode in ([], ["--plaintext"]):
            bridges[bool(mode)] = free_port()
            bridge = Proc(
                "epp-bridge",
                [bin_path("epp-bridge"), "--port", str(bridges[bool(mode)]), "--metrics-port", "0", *mode],
                work / f"bridge-{len(mode)}.log",
            ).start()
            procs.append(bridge)
            wait_port(bridges[bool(mode)], proc=bridge.popen)

        for name, picker, epp_port in [
            ("nginx+NJS+epp-bridge+EPP (TLS)", bridges[False], grpc_port),
            ("nginx+NJS+epp-bridge+EPP (plaintext)", bridges[True], plain_port),
            ("nginx+NJS+EPP picker port", picker_port, grpc_port),
        ]:
            port = free_port()
            settings = nginxconf.NginxSettings(
                listen_port=port,
                picker_url=f"http://127.0.0.1:{picker}/",
                epp_port=epp_port,
                pool=[f"127.0.0.1:{backend}"],
                access_log=False,
            )
            nginxconf.write(settings, work / f"gw-{port}")
            p = Proc("nginx", nginxconf.command(work / f"gw-{port}"), work / f"gw-{port}.out").start()
            procs.append(p)
            wait_port(port, proc=p.popen)
            gateways[name] = port

        body = work / "body.json"
        body.write_bytes(body_of_size(body_bytes))
        points = []
        for c in connections:
            for name, port in gateways.items():
                url = f"http://127.0.0.1:{port}/v1/completions"
                wrk.run(url, body, c, 1, work)  # warm-up: connections, channels, JIT-free but caches
                r = wrk.run(url, body, c, seconds, work)
                points.append(Point(name, c, r.rps, r.p50_ms, r.p99_ms, r.errors))
                print(
                    f"{name:38s} c={c:<3d} {r.rps:9.0f} req/s  p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms"
                    f"  errors {r.errors}",
                    flush=True,
                )
        return points
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(points: list[Point]) -> str:
    base = {p.connections: p for p in points if p.setup == "nginx alone"}
    rows = [
        "| setup | conns | req/s | p50 ms | p99 ms | added p50 / p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        b = base[p.connections]
        added = "-" if p is b else f"{p.p50_ms - b.p50_ms:.2f} / {p.p99_ms - b.p99_ms:.2f}"
        rows.append(
            f"| {p.setup} | {p.connections} | {p.rps:,.0f} | {p.p50_ms:.3f} | {p.p99_ms:.3f} | {added} | {p.errors} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m epp.bridge.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    ap.add_argument("--connections", default="1,16", help="wrk connections, comma-separated")
    ap.add_argument("--body-bytes", type=int, default=1024)
    ap.add_argument("--json", default="", help="also write the points to this file")
    args = ap.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; body {args.body_bytes} B",
        flush=True,
    )
    points = run(args.seconds, [int(c) for c in args.connections.split(",")], args.body_bytes)
    print()
    print(table(points))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in points], indent=2))


if __name__ == "__main__":
    main()

"""`epp-bench overhead`: what the EPP adds on the request path, Envoy alone vs Envoy + EPP.

Backend: nginx answering a fixed completion (C, so the backend is never the bottleneck), with a
realistic vLLM /metrics page so the EPP's scraping cost is included. Load: wrk, one thread.
Both Envoy configurations run FULL_DUPLEX_STREAMED request and response processing.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from epp.bench import procstat, wrk
from epp.bench.results import write_points
from epp.datalayer.vllmpage import VllmState, vllm_page
from epp.stack import envoyconf
from epp.stack.processes import Proc, bin_path, free_port, wait_port

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_buffer_size 1m;
    client_max_body_size 10m;
    server {{
        listen 127.0.0.1:{port};
        location = /metrics {{ default_type text/plain; alias {dir}/metrics.txt; }}
        location / {{
            default_type application/json;
            return 200 '{response}';
        }}
    }}
}}
"""

RESPONSE = (
    '{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,'
    '"text":"hello","finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":1,'
    '"total_tokens":6}}'
)


@dataclass
class Point:
    setup: str  # "envoy" | "envoy+epp"
    body_bytes: int
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    epp_cpu_s_per_1k: float | None = None
    epp_rss_mb: float | None = None


def body_of_size(n: int) -> bytes:
    base = {"model": "m", "max_tokens": 1, "prompt": ""}
    pad = n - len(orjson.dumps(base))
    base["prompt"] = ("lorem ipsum dolor sit amet " * (pad // 27 + 1))[: max(pad, 1)]
    return orjson.dumps(base)


def start_nginx(workdir: Path, procs: list[Proc]) -> int:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("nginx not found: run `make bench-deps` (Debian packages nginx and wrk)")
    port = free_port()
    (workdir / "metrics.txt").write_text(vllm_page(VllmState(running=1, kv_usage=0.1)))
    # nginx started as root serves files as its unprivileged worker user: the page and the
    # directory (mkdtemp makes it 0700) must be readable, or /metrics is a 403 and the EPP
    # judges the server without a page.
    workdir.chmod(0o755)
    (workdir / "metrics.txt").chmod(0o644)
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port, response=RESPONSE))
    p = Proc(
        "nginx",
        [nginx, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "nginx-error.log")],
        workdir / "nginx.log",
    ).start()
    procs.append(p)
    wait_port(port, proc=p.popen)
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    if page.status_code != 200 or "vllm:" not in page.text:
        raise RuntimeError(f"the backend's /metrics page is not served (HTTP {page.status_code}): see {workdir}")
    return port


def run_overhead(
    seconds: float = 10.0,
    connections=(1, 32),
    sizes=(1024, 200 * 1024),
    out_dir: Path | None = None,
    epp_args: tuple[str, ...] = (),
) -> list[Point]:
    if not wrk.wrk_available():
        raise RuntimeError("wrk not found: run `make bench-deps` (Debian packages nginx and wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="epp-overhead-"))
    procs: list[Proc] = []
    points: list[Point] = []
    try:
        backend = start_nginx(workdir, procs)
        pool = [("127.0.0.1", backend)]
        # Envoy alone: the request goes straight to the backend.
        plain_port = free_port()
        conf = envoyconf.render(
            "original-dst",
            listen_port=plain_port,
            admin_port=free_port(),
            epp_port=free_port(),
            pool=pool,
            lb="round_robin",
        )
        procs.append(
            Proc(
                "envoy-plain",
                [
                    bin_path("envoy"),
                    "-c",
                    str(envoyconf.write(conf, workdir / "plain.yaml")),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                    "--base-id",
                    "7101",
                ],
                workdir / "envoy-plain.log",
            ).start()
        )
        wait_port(plain_port, proc=procs[-1].popen)
        # Envoy + EPP (TLS, FULL_DUPLEX_STREAMED both ways, the user-facing config).
        g, h, m = free_port(), free_port(), free_port()
        epp = Proc(
            "epp",
            [
                bin_path("epp"),
                "--static-endpoints",
                f"127.0.0.1:{backend}",
                "--grpc-port",
                str(g),
                "--grpc-health-port",
                str(h),
                "--metrics-port",
                str(m),
                "--health-checking",
                "-v=1",
                *epp_args,
            ],
            workdir / "epp.log",
        ).start()
        procs.append(epp)
        wait_port(g, proc=epp.popen)
        epp_gw = free_port()
        conf = envoyconf.render("original-dst", listen_port=epp_gw, admin_port=free_port(), epp_port=g)
        procs.append(
            Proc(
                "envoy-epp",
                [
                    bin_path("envoy"),
                    "-c",
                    str(envoyconf.write(conf, workdir / "epp.yaml")),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                    "--base-id",
                    "7102",
                ],
                workdir / "envoy-epp.log",
            ).start()
        )
        wait_port(epp_gw, proc=procs[-1].popen)
        time.sleep(1.0)  # health checks and the first scrapes
        for size in sizes:
            body_path = workdir / f"body-{size}.json"
            body_path.write_bytes(body_of_size(size))
            for c in connections:
                for setup, port in (("envoy", plain_port), ("envoy+epp", epp_gw)):
                    wrk.run(f"http://127.0.0.1:{port}/v1/completions", body_path, c, 2, workdir)  # warm-up
                    assert epp.popen is not None
                    epp_pid = epp.popen.pid
                    cpu0 = procstat.tree_cpu_seconds(epp_pid)  # worker processes count
                    r = wrk.run(f"http://127.0.0.1:{port}/v1/completions", body_path, c, seconds, workdir)
                    cpu1 = procstat.tree_cpu_seconds(epp_pid)
                    pt = Point(
                        setup, size, c, r.requests, round(r.rps, 1), round(r.p50_ms, 3), round(r.p99_ms, 3), r.errors
                    )
                    if setup == "envoy+epp":
                        pt.epp_cpu_s_per_1k = round((cpu1 - cpu0) / max(r.requests, 1) * 1000, 3)
                        pt.epp_rss_mb = round(
                            sum(procstat.rss_bytes(q) for q in procstat.descendants(epp_pid)) / 2**20, 1
                        )
                    points.append(pt)
                    print(
                        f"  {setup:10s} body={size:>7d}B c={c:<3d} {pt.rps:>8.1f} req/s  p50 {pt.p50_ms:.3f} ms"
                        f"  p99 {pt.p99_ms:.3f} ms  errors {pt.errors}"
                        + (
                            f"  EPP {pt.epp_cpu_s_per_1k} CPU-s/1k req, {pt.epp_rss_mb} MB RSS"
                            if pt.epp_cpu_s_per_1k is not None
                            else ""
                        ),
                        flush=True,
                    )
    finally:
        for p in reversed(procs):
            p.stop()
    write_points(out_dir, "overhead", points, overhead_table(points))
    return points


def overhead_table(points: list[Point]) -> str:
    rows = [
        "| body | conns | Envoy req/s | Envoy+EPP req/s | Envoy p50 / p99 ms | Envoy+EPP p50 / p99 ms "
        "| added p50 ms | EPP CPU-s per 1k req | EPP RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(p.setup, p.body_bytes, p.connections): p for p in points}
    for (setup, size, c), p in by.items():
        if setup != "envoy":
            continue
        e = by.get(("envoy+epp", size, c))
        if e is None:
            continue
        label = f"{size // 1024} KB"
        rows.append(
            f"| {label} | {c} | {p.rps:,.0f} | {e.rps:,.0f} | {p.p50_ms:.2f} / {p.p99_ms:.2f} | "
            f"{e.p50_ms:.2f} / {e.p99_ms:.2f} | {e.p50_ms - p.p50_ms:.2f} | {e.epp_cpu_s_per_1k} | "
            f"{e.epp_rss_mb} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    run_overhead(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)

"""Streaming points of `epp-bench overhead`: what the EPP costs per streamed token.

S concurrent clients each stream completions of M tokens through Envoy from a paced SSE
backend (epp/bench/sseserver.py: one event every `interval`, so every token is one Envoy body
chunk and, with the EPP, one ext_proc message each way). Envoy alone and Envoy + EPP (one
EPP per ext_proc transport) run side by side in one run, point by point. Per point: ext_proc
messages/s (Envoy's own ext_proc counters), EPP CPU µs per message, Envoy CPU µs per message,
time to first token and inter-token gaps with what the EPP adds to each (p50/p99), errors.

The load generator is this process, on raw asyncio streams (HTTP/1.1 keep-alive, one
connection per stream). `cancel` closes that fraction of streams after a random number of
tokens, as clients that give up do; Envoy then resets the upstream and the ext_proc stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.bench import procstat
from epp.bench.results import write_points
from epp.stack import envoyconf
from epp.stack.processes import Proc, bin_path, free_port, wait_port


@dataclass
class StreamResult:
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _one_client(
    port: int, body: bytes, deadline: float, res: StreamResult, cancel: float, rng: random.Random, chunks: int
) -> None:
    req = (
        b"POST /v1/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    reader = writer = None
    try:
        while time.monotonic() < deadline:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            cut = rng.randrange(1, chunks) if cancel and rng.random() < cancel else 0
            t0 = time.monotonic()
            writer.write(req)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
                res.error(type(exc).__name__)
                writer.close()
                writer = None
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                try:  # the body says who answered (Envoy's "upstream connect error..." or the EPP's)
                    snippet = (await asyncio.wait_for(reader.read(200), 1)).split(b"\r\n")
                    snippet = max(snippet, key=len)[:90]
                except (ConnectionError, TimeoutError):
                    snippet = b""
                res.error(
                    head.split(b"\r\n", 1)[0][9:].decode(errors="replace") + ": " + snippet.decode(errors="replace")
                )
                writer.close()  # the body of an error is not worth parsing: start afresh
                writer = None
                continue
            tokens, last, done = 0, None, False
            tail = b""
            while not done:
                try:
                    data = await asyncio.wait_for(reader.read(65536), 30)
                except (ConnectionError, TimeoutError) as exc:
                    res.error(type(exc).__name__)
                    break
                if not data:
                    res.error("closed mid-stream")
                    break
                now = time.monotonic()
                n = data.count(b'"text":')
                if n:
                    if last is None:
                        res.ttft.append(now - t0)
                    else:
                        res.gaps.append(now - last)
                        res.gaps.extend([0.0] * (n - 1))
                    last = now
                    tokens += n
                tail = (tail + data)[-16:]
                done = tail.endswith(b"\r\n0\r\n\r\n")
                if cut and tokens >= cut and not done:
                    res.cancelled += 1
                    writer.close()
                    writer = None
                    break
            else:
                res.requests += 1
                res.tokens += tokens
                continue
            if writer is not None:  # an error ended the stream: the connection is in an unknown state
                writer.close()
                writer = None
    except (ConnectionError, OSError) as exc:
        res.error(type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()


async def drive(
    port: int, streams: int, seconds: float, chunks: int, cancel: float = 0.0, seed: int = 1
) -> StreamResult:
    res = StreamResult()
    body = json.dumps(
        {"model": "m", "prompt": "Say something long about routing.", "max_tokens": chunks, "stream": True}
    ).encode()
    deadline = time.monotonic() + seconds
    rng = random.Random(seed)
    await asyncio.gather(
        *(_one_client(port, body, deadline, res, cancel, random.Random(rng.random()), chunks) for _ in range(streams))
    )
    return res


def ext_proc_messages(admin_port: int) -> tuple[int, int]:
    """(messages Envoy sent to the EPP, messages it received) from its ext_proc counters."""
    text = httpx.get(f"http://127.0.0.1:{admin_port}/stats?filter=ext_proc", timeout=5).text
    sent = received = 0
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name.endswith("ext_proc.stream_msgs_sent"):
            sent += int(value)
        elif name.endswith("ext_proc.stream_msgs_received"):
            received += int(value)
    return sent, received


@dataclass
class StreamPoint:
    setup: str  # "envoy" | "envoy+epp (<transport>)"
    streams: int
    chunks: int
    interval_ms: float
    seconds: float
    requests: int
    tokens: int
    errors: int
    cancelled: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    envoy_cpu_us_per_token: float
    extproc_msgs: int = 0
    extproc_msgs_per_s: float = 0.0
    epp_cpu_us_per_msg: float | None = None
    envoy_cpu_us_per_msg: float | None = None
    epp_cpu_cores: float | None = None
    epp_idle_cores: float | None = None  # the EPP's CPU with no traffic (scrapes at 50 ms, gauges)
    epp_cpu_us_per_msg_net: float | None = None  # per message, the idle cost taken out
    worker_requests: list[int] = field(default_factory=list)  # with --workers > 1: requests routed per worker
    error_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class _Gateway:
    name: str
    port: int
    admin: int
    envoy: Proc
    epp: Proc | None = None
    metrics_port: int = 0


def worker_requests(metrics_port: int) -> dict[str, int]:
    """epp_extproc_worker_requests_total per worker, from the EPP's metrics port."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("epp_extproc_worker_requests_total{"):
            out[line.split('"')[1]] = int(float(line.rsplit(" ", 1)[1]))
    return out


def parse_setup(name: str) -> tuple[str, int]:
    """ "grpcio", "h2corn" (one process) or "h2cornx2" (two workers): (transport, workers)."""
    transport, _, workers = name.partition("x")
    if transport not in ("grpcio", "h2corn"):
        raise ValueError(f"unknown EPP setup {name!r}: grpcio, h2corn or h2cornxN")
    return transport, int(workers or 1)


def _taskset(cpus: str | None, args: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *args] if cpus else args


def run_streaming(
    streams=(1, 16, 64, 256),
    chunks: int = 64,
    interval_ms: float = 10.0,
    seconds: float = 10.0,
    transports=("grpcio", "h2corn", "h2cornx2"),
    cancel: float = 0.0,
    out_dir: Path | None = None,
    epp_cpus: str | None = None,
    other_cpus: str | None = None,
    envoy_concurrency: int = 1,
    epp_args: tuple[str, ...] = (),
    tls: bool = True,
) -> list[StreamPoint]:
    workdir = Path(tempfile.mkdtemp(prefix="epp-streaming-"))
    procs: list[Proc] = []
    points: list[StreamPoint] = []
    if other_cpus:
        os.sched_setaffinity(0, {int(c) for c in other_cpus.split(",")})
    try:
        bport = free_port()
        backend = Proc(
            "sse-backend",
            _taskset(
                other_cpus,
                [
                    sys.executable,
                    "-m",
                    "epp.bench.sseserver",
                    "--port",
                    str(bport),
                    "--chunks",
                    str(chunks),
                    "--interval-ms",
                    str(interval_ms),
                ],
            ),
            workdir / "backend.log",
        ).start()
        procs.append(backend)
        wait_port(bport, proc=backend.popen)
        gateways: list[_Gateway] = []

        def envoy(name: str, conf: dict, base_id: int) -> _Gateway:
            port, admin = (
                conf["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
                conf["admin"]["address"]["socket_address"]["port_value"],
            )
            p = Proc(
                f"envoy-{name}",
                _taskset(
                    other_cpus,
                    [
                        bin_path("envoy"),
                        "-c",
                        str(envoyconf.write(conf, workdir / f"{name}.yaml")),
                        "--concurrency",
                        str(envoy_concurrency),
                        "--log-level",
                        "error",
                        "--base-id",
                        str(base_id),
                    ],
                ),
                workdir / f"envoy-{name}.log",
            ).start()
            procs.append(p)
            wait_port(port, proc=p.popen)
            return _Gateway(name, port, admin, p)

        gateways.append(
            envoy(
                "envoy",
                envoyconf.render(
                    "original-dst",
                    listen_port=free_port(),
                    admin_port=free_port(),
                    epp_port=free_port(),
                    pool=[("127.0.0.1", bport)],
                    lb="round_robin",
                ),
                7201,
            )
        )
        for i, setup in enumerate(transports):
            transport, workers = parse_setup(setup)
            g, h, m = free_port(), free_port(), free_port()
            epp = Proc(
                f"epp-{setup}",
                _taskset(
                    epp_cpus,
                    [
                        bin_path("epp"),
                        "--static-endpoints",
                        f"127.0.0.1:{bport}",
                        "--grpc-port",
                        str(g),
                        "--grpc-health-port",
                        str(h),
                        "--metrics-port",
                        str(m),
                        "--health-checking",
                        "-v=1",
                        "--extproc-transport",
                        transport,
                        "--workers",
                        str(workers),
                        f"--secure-serving={str(tls).lower()}",
                        *epp_args,
                    ],
                ),
                workdir / f"epp-{setup}.log",
            ).start()
            procs.append(epp)
            wait_port(g, proc=epp.popen)
            gw = envoy(
                setup,
                envoyconf.render(
                    "original-dst", listen_port=free_port(), admin_port=free_port(), epp_port=g, epp_tls=tls
                ),
                7202 + i,
            )
            label = transport if workers == 1 else f"{transport}, {workers} workers"
            gw.name, gw.epp, gw.metrics_port = f"envoy+epp ({label})", epp, m
            gateways.append(gw)
        time.sleep(2.0)  # health checks and the first scrapes
        idle = {}
        for gw in gateways:  # what each EPP costs with no traffic (scraping, gauges): reported apart
            if gw.epp is not None:
                c0 = procstat.tree_cpu_seconds(gw.epp.popen.pid)
                time.sleep(3.0)
                idle[gw.name] = (procstat.tree_cpu_seconds(gw.epp.popen.pid) - c0) / 3.0
        for s in streams:
            for gw in gateways:
                asyncio.run(drive(gw.port, s, min(2.0, seconds), chunks, cancel))  # warm-up
                e0 = procstat.tree_cpu_seconds(gw.envoy.popen.pid)
                p0 = procstat.tree_cpu_seconds(gw.epp.popen.pid) if gw.epp else 0.0
                m0 = ext_proc_messages(gw.admin)
                w0 = worker_requests(gw.metrics_port) if gw.epp else {}
                t0 = time.monotonic()
                res = asyncio.run(drive(gw.port, s, seconds, chunks, cancel))
                wall = time.monotonic() - t0
                e1 = procstat.tree_cpu_seconds(gw.envoy.popen.pid)
                p1 = procstat.tree_cpu_seconds(gw.epp.popen.pid) if gw.epp else 0.0
                m1 = ext_proc_messages(gw.admin)
                w1 = worker_requests(gw.metrics_port) if gw.epp else {}
                msgs = m1[0] - m0[0]
                pt = StreamPoint(
                    gw.name,
                    s,
                    chunks,
                    interval_ms,
                    round(wall, 2),
                    res.requests,
                    res.tokens,
                    res.errors,
                    res.cancelled,
                    round(_pct(res.ttft, 0.5) * 1000, 2),
                    round(_pct(res.ttft, 0.99) * 1000, 2),
                    round(_pct(res.gaps, 0.5) * 1000, 3),
                    round(_pct(res.gaps, 0.99) * 1000, 3),
                    round((e1 - e0) / max(res.tokens, 1) * 1e6, 1),
                    msgs,
                    round(msgs / wall, 1),
                    error_kinds=res.error_kinds,
                )
                if gw.epp is not None:
                    pt.epp_cpu_us_per_msg = round((p1 - p0) / max(msgs, 1) * 1e6, 1)
                    pt.envoy_cpu_us_per_msg = round((e1 - e0) / max(msgs, 1) * 1e6, 1)
                    pt.epp_cpu_cores = round((p1 - p0) / wall, 2)
                    pt.epp_idle_cores = round(idle[gw.name], 3)
                    pt.epp_cpu_us_per_msg_net = round(max(0.0, p1 - p0 - idle[gw.name] * wall) / max(msgs, 1) * 1e6, 1)
                    pt.worker_requests = [w1[k] - w0.get(k, 0) for k in sorted(w1)]
                points.append(pt)
                print(
                    f"  {pt.setup:22s} S={s:<4d} {pt.requests:>6d} req {pt.tokens / wall:>8.0f} tok/s "
                    f"{pt.extproc_msgs_per_s:>8.0f} msg/s  TTFT p50 {pt.ttft_p50_ms:.1f} p99 {pt.ttft_p99_ms:.1f} ms"
                    f"  ITL p50 {pt.itl_p50_ms:.2f} p99 {pt.itl_p99_ms:.2f} ms  errors {pt.errors}"
                    + (
                        f"  EPP {pt.epp_cpu_us_per_msg} µs/msg ({pt.epp_cpu_us_per_msg_net} net of idle, "
                        f"{pt.epp_cpu_cores} cores)"
                        f" Envoy {pt.envoy_cpu_us_per_msg} µs/msg"
                        + (f" split {'/'.join(map(str, pt.worker_requests))}" if pt.worker_requests else "")
                        if gw.epp
                        else f"  Envoy {pt.envoy_cpu_us_per_token} µs/token"
                    ),
                    flush=True,
                )
    finally:
        for p in reversed(procs):
            p.stop()
    write_points(out_dir, "streaming", points, streaming_table(points))
    return points


def _us(raw: float | None, net: float | None) -> str:
    return "—" if raw is None else f"{raw} ({net})"


def streaming_table(points: list[StreamPoint]) -> str:
    base = {p.streams: p for p in points if p.setup == "envoy"}
    rows = [
        "| setup | streams | tokens/s | ext_proc msg/s | EPP µs CPU/msg (net of idle) | EPP cores | Envoy µs CPU/msg "
        "| TTFT p50 / p99 ms (added) | ITL p50 / p99 ms (added) | errors | requests per worker |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        b = base.get(p.streams)
        added = ""
        if p.setup != "envoy" and b is not None:
            added_ttft = f" (+{p.ttft_p50_ms - b.ttft_p50_ms:.1f} / +{p.ttft_p99_ms - b.ttft_p99_ms:.1f})"
            added_itl = f" (+{p.itl_p50_ms - b.itl_p50_ms:.2f} / +{p.itl_p99_ms - b.itl_p99_ms:.2f})"
        else:
            added_ttft = added_itl = added
        rows.append(
            f"| {p.setup} | {p.streams} | {p.tokens / p.seconds:,.0f} | {p.extproc_msgs_per_s:,.0f} | "
            f"{_us(p.epp_cpu_us_per_msg, p.epp_cpu_us_per_msg_net)} | "
            f"{p.epp_cpu_cores if p.epp_cpu_cores is not None else '—'} | "
            f"{p.envoy_cpu_us_per_msg if p.envoy_cpu_us_per_msg is not None else '—'} | "
            f"{p.ttft_p50_ms:.1f} / {p.ttft_p99_ms:.1f}{added_ttft} | "
            f"{p.itl_p50_ms:.2f} / {p.itl_p99_ms:.2f}{added_itl} | {p.errors} | "
            f"{' / '.join(map(str, p.worker_requests)) or '—'} |"
        )
    return "\n".join(rows) + "\n"

"""`epp-bench overhead --part capacity`: how many ext_proc messages one EPP process carries.

Through Envoy on a 2-core machine the EPP never gets a core to itself (Envoy, the backend and
the load generator need the other one and more), so this drives the ext_proc port directly
with h2load (nghttp2's C load generator, Debian package nghttp2-client): each HTTP/2 stream is
one gRPC Process call whose request body holds a whole exchange as Envoy sends it in
FULL_DUPLEX_STREAMED mode (request headers, the JSON body, response headers, M SSE token
chunks, the last chunk with end_of_stream). The EPP routes it and answers every message as it
would behind Envoy. With `--epp-cpus 0 --other-cpus 1` the EPP has one core and h2load the
other: messages/s is then one process's capacity, and CPU per message its cost.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.bench import procstat
from epp.bench.results import write_points
from epp.bench.sseserver import token_event, usage_event
from epp.extproc.framing import frame
from epp.stack.processes import Proc, bin_path, free_port, wait_port

PROCESS_PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def _headers(pairs: list[tuple[str, str]]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])


def exchange_bytes(chunks: int) -> bytes:
    """One exchange's ProcessingRequests, gRPC-framed, as Envoy sends them."""
    body = json.dumps(
        {"model": "m", "prompt": "Say something long about routing.", "max_tokens": chunks, "stream": True}
    ).encode()
    msgs = [
        pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(
                headers=_headers(
                    [
                        (":method", "POST"),
                        (":path", "/v1/completions"),
                        (":authority", "gw"),
                        (":scheme", "http"),
                        ("content-type", "application/json"),
                        ("content-length", str(len(body))),
                    ]
                )
            )
        ),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(
                headers=_headers([(":status", "200"), ("content-type", "text/event-stream")])
            )
        ),
    ]
    msgs += [pb.ProcessingRequest(response_body=pb.HttpBody(body=token_event(i))) for i in range(chunks)]
    msgs.append(
        pb.ProcessingRequest(
            response_body=pb.HttpBody(body=usage_event(chunks) + b"data: [DONE]\n\n", end_of_stream=True)
        )
    )
    return b"".join(frame(m.SerializeToString()) for m in msgs)


@dataclass
class CapacityPoint:
    setup: str
    streams: int
    chunks: int
    seconds: float
    exchanges: int
    failed: int
    msgs_per_s: float
    epp_cpu_us_per_msg: float
    epp_cores: float


def _h2load(url: str, data: Path, connections: int, streams: int, seconds: float, cpus: str | None) -> str:
    args = [
        "h2load",
        "-c",
        str(connections),
        "-m",
        str(max(1, streams // connections)),
        "-D",
        str(int(seconds)),
        "--warm-up-time",
        "2",
        "-d",
        str(data),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        url,
    ]
    if cpus:
        args = ["taskset", "-c", cpus, *args]
    return subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60).stdout


def run_capacity(
    setups=("grpcio", "h2corn"),
    streams: int = 64,
    connections: int = 8,
    chunks: int = 64,
    seconds: float = 10.0,
    epp_cpus: str | None = "0",
    other_cpus: str | None = "1",
    out_dir: Path | None = None,
) -> list[CapacityPoint]:
    if shutil.which("h2load") is None:
        raise RuntimeError("h2load not found: run `make install` (Debian package nghttp2-client)")
    from epp.bench.streaming import parse_setup

    workdir = Path(tempfile.mkdtemp(prefix="epp-capacity-"))
    data = workdir / "exchange.bin"
    data.write_bytes(exchange_bytes(chunks))
    per_exchange = chunks + 4
    points = []
    for setup in setups:
        transport, workers = parse_setup(setup)
        g, h, m = free_port(), free_port(), free_port()
        args = [
            bin_path("epp"),
            "--static-endpoints",
            "127.0.0.1:9",
            "--grpc-port",
            str(g),
            "--grpc-health-port",
            str(h),
            "--metrics-port",
            str(m),
            "--secure-serving=false",
            "-v=1",
            "--extproc-transport",
            transport,
            "--workers",
            str(workers),
            "--refresh-metrics-interval",
            "1h",
        ]
        epp = Proc(
            f"epp-{setup}", ["taskset", "-c", epp_cpus, *args] if epp_cpus else args, workdir / f"epp-{setup}.log"
        ).start()
        try:
            wait_port(g, proc=epp.popen)
            time.sleep(1.0)
            c0 = procstat.tree_cpu_seconds(epp.popen.pid)
            t0 = time.monotonic()
            out = _h2load(f"http://127.0.0.1:{g}{PROCESS_PATH}", data, connections, streams, seconds, other_cpus)
            wall = time.monotonic() - t0
            c1 = procstat.tree_cpu_seconds(epp.popen.pid)
        finally:
            epp.stop()
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
        if done is None:
            raise RuntimeError(f"h2load gave no result:\n{out[-2000:]}")
        exchanges, failed = int(done.group(1)), int(done.group(3))
        msgs = exchanges * per_exchange
        # h2load measures `seconds` after its warm-up; the EPP's CPU covers the warm-up too.
        measured = float(seconds)
        busy = c1 - c0
        pt = CapacityPoint(
            setup,
            streams,
            chunks,
            measured,
            exchanges,
            failed,
            round(msgs / measured, 0),
            round(busy / max(1, msgs * (wall / measured)) * 1e6, 1),
            round(busy / wall, 2),
        )
        points.append(pt)
        print(
            f"  {setup:10s} S={streams} {pt.msgs_per_s:>9,.0f} msg/s  {pt.epp_cpu_us_per_msg} µs CPU/msg  "
            f"{pt.epp_cores} cores  {exchanges} exchanges, {failed} failed",
            flush=True,
        )
    write_points(out_dir, "capacity", points, capacity_table(points, epp_cpus, other_cpus))
    return points


def capacity_table(points: list[CapacityPoint], epp_cpus: str | None, other_cpus: str | None) -> str:
    rows = [
        f"EPP on CPU {epp_cpus or 'any'}, h2load on CPU {other_cpus or 'any'}; ext_proc straight to the EPP "
        "(no Envoy), each exchange = request headers + body + response headers + token chunks.",
        "",
        "| setup | concurrent streams | tokens per exchange | messages/s | EPP µs CPU/message | EPP cores | failed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in points:
        rows.append(
            f"| {p.setup} | {p.streams} | {p.chunks} | {p.msgs_per_s:,.0f} | {p.epp_cpu_us_per_msg} | "
            f"{p.epp_cores} | {p.failed} |"
        )
    return "\n".join(rows) + "\n"

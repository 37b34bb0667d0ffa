"""Pick latency as Envoy sees it: one ext_proc round trip, request headers + body in, the
routing answer out, straight to the EPP's gRPC port (plaintext).

Each probe then finishes its exchange (response headers and an end-of-stream body), so the
EPP releases the in-flight load it counted and the probes do not skew later picks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.bench.reliability import clientloop
from epp.bench.reliability.stack import MODEL
from epp.bench.summary import percentile


def _headers(h: dict[str, str]) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in h.items()])


def _request(n: int) -> list[pb.ProcessingRequest]:
    rh = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=_headers(
                {
                    ":method": "POST",
                    ":path": "/v1/completions",
                    ":authority": "gw",
                    ":scheme": "http",
                    "content-type": "application/json",
                }
            )
        )
    )
    rh.protocol_config.request_body_mode = rh.protocol_config.response_body_mode = 4
    body = orjson.dumps({"model": MODEL, "prompt": f"probe {n}: how far is the moon?", "max_tokens": 1})
    return [rh, pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))]


_FINISH = [
    pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=_headers({":status": "200"}))),
    pb.ProcessingRequest(response_body=pb.HttpBody(body=b"{}", end_of_stream=True)),
]


@dataclass
class ProbeResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    destinations: dict[str, int] = field(default_factory=dict)

    def pct(self, q: float) -> float | None:
        v = percentile(self.latencies_ms, q)
        return round(v, 2) if v is not None else None

    @property
    def count(self) -> int:
        return len(self.latencies_ms)


async def one_pick(stub: pb_grpc.ExternalProcessorStub, n: int, result: ProbeResult) -> None:
    call = stub.Process(timeout=10)
    try:
        t0 = time.perf_counter()
        for m in _request(n):
            await call.write(m)
        first = await call.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if first is grpc.aio.EOF or first.WhichOneof("response") != "request_headers":
            result.errors += 1
            call.cancel()
            return
        result.latencies_ms.append(elapsed)
        dest = next(
            (
                h.header.raw_value.decode()
                for h in first.request_headers.response.header_mutation.set_headers
                if h.header.key == "x-gateway-destination-endpoint"
            ),
            "",
        )
        result.destinations[dest] = result.destinations.get(dest, 0) + 1
        for m in _FINISH:
            await call.write(m)
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        result.errors += 1


async def probe_picks(grpc_port: int, rate: float, seconds: float, stop: asyncio.Event | None = None) -> ProbeResult:
    """Start a pick every 1/rate s for `seconds` (or until `stop`); overlapping picks are allowed."""
    result = ProbeResult()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        tasks: list[asyncio.Task] = []
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds and not (stop and stop.is_set()):
            tasks.append(asyncio.create_task(one_pick(stub, n, result)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return result


def measure_picks(grpc_port: int, rate: float, seconds: float) -> ProbeResult:
    """probe_picks from synchronous code, on the shared gRPC client loop."""
    return clientloop.run(probe_picks(grpc_port, rate, seconds), seconds + 60)

"""Send fuzzed ext_proc streams to an EPP over real gRPC and check what it does with them.

Per stream: it ends within a bound (no hang), every message the EPP sends is a valid
ProcessingResponse, and the stream ends OK or with a gRPC status a hostile client deserves
(never UNKNOWN/INTERNAL: those are exceptions the servicer did not handle). After all of
them: every endpoint's in-flight counts and the running-requests gauge are back to 0, and
the EPP still routes a well-formed request.

Messages travel as raw bytes (identity serializers), so garbage reaches the server exactly
as sent. Two targets: the EPP inside this process on its own event-loop thread (the fast
tests read its datastore directly), or the `epp` program (the benchmark: RSS of the EPP
alone, and a crash is a dead process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import httpx
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError

from epp.bench.procstat import rss_bytes
from epp.bench.reliability import clientloop
from epp.bench.reliability.fuzzstreams import BODY_LIMIT, FuzzStream
from epp.bench.reliability.picks import read_picks, sample_value
from epp.bench.reliability.stack import MODEL, EppProcess, Stack

METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
# What a client that breaks the protocol may be told; anything else is a bug in the EPP.
ACCEPTABLE_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
CLIENT_CORE_RACE = "Internal error from Core"
UNHANDLED_BODY = b"inference error: Internal - internal error"  # the servicer's catch-all answer


@dataclass
class StreamOutcome:
    responses: list[str]  # the oneof field of each response
    code: grpc.StatusCode
    immediate: list[int]  # HTTP statuses of immediate responses
    seconds: float
    problems: list[str] = field(default_factory=list)


@dataclass
class Accounting:
    """In-flight load and running requests the EPP still counts; all zero once every stream is over."""

    inflight: dict[str, tuple[int, ...]]  # endpoint -> (requests, prompt tokens, [prefill/held ...])
    running: float
    open_streams: int | None = None  # streams the servicer still runs (in-process only)

    @property
    def clean(self) -> bool:
        return self.running == 0 and not self.open_streams and not any(any(v) for v in self.inflight.values())


async def drive(channel: grpc.aio.Channel, stream: FuzzStream, bound: float) -> StreamOutcome:
    """Run one stream the way its spec says; never raises for anything the server does."""
    t0 = time.monotonic()
    call = channel.stream_stream(METHOD)(timeout=bound + 5)
    raw: list[bytes] = []
    problems: list[str] = []

    async def read() -> None:
        async for r in call:
            raw.append(r)

    reader = asyncio.ensure_future(read())
    cancelled = write_failed = False
    try:
        async with asyncio.timeout(bound):
            for i, m in enumerate(stream.messages):
                if stream.cancel_after == i:
                    break
                if reader.done():
                    break  # the server ended the stream: nothing more to write
                try:
                    await call.write(m)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    write_failed = True
                    break
            if stream.cancel_after is not None:
                if stream.settle:
                    await asyncio.sleep(0.005)
                cancelled = call.cancel()
            else:
                try:
                    await call.done_writing()
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    write_failed = True
            await asyncio.wait({reader})  # never raises, so the bound's cancellation is not swallowed
    except TimeoutError:
        call.cancel()
        problems.append(f"stream not over after {bound} s (hang)")
    if not reader.done():
        reader.cancel()
    elif not reader.cancelled():
        reader.exception()  # retrieved: the call's status below says what happened
    code, details = await call.code(), await call.details()
    # A write racing the server's end of the stream fails in the client's own gRPC core, which
    # then reports this status locally; the server had ended the stream cleanly.
    raced = write_failed and code == grpc.StatusCode.INTERNAL and details == CLIENT_CORE_RACE
    if (
        not (code == grpc.StatusCode.CANCELLED and cancelled)
        and not raced
        and code not in ACCEPTABLE_CODES
        and not problems
    ):
        problems.append(f"stream ended with {code.name}: {details}")
    kinds, immediate = [], []
    for b in raw:
        try:
            r = pb.ProcessingResponse.FromString(b)
        except DecodeError:
            problems.append(f"response is not a ProcessingResponse: {b[:40]!r}")
            continue
        kind = r.WhichOneof("response")
        if kind is None:
            problems.append("response with nothing set")
        elif kind == "immediate_response":
            status = r.immediate_response.status.code
            immediate.append(status)
            if not 400 <= status <= 599:
                problems.append(f"immediate response with HTTP status {status}")
            if r.immediate_response.body == UNHANDLED_BODY:
                problems.append("an exception the EPP did not handle (answered 500 internal error)")
        kinds.append(kind or "")
    return StreamOutcome(kinds, code, immediate, time.monotonic() - t0, problems)


class FuzzTarget:
    """Hypothesis drives examples synchronously; their gRPC runs on the shared client loop."""

    channel: grpc.aio.Channel

    @staticmethod
    def call(coro, timeout: float):
        return clientloop.run(coro, timeout)

    def run(self, stream: FuzzStream, bound: float) -> StreamOutcome:
        return self.call(drive(self.channel, stream, bound), bound + 15)

    def route_one(self) -> str:
        """Route a well-formed completion; returns the destination the EPP chose."""

        async def go() -> str:
            call = self.channel.stream_stream(METHOD)(timeout=10)
            for m in completion_messages():
                await call.write(m)
            await call.done_writing()
            for b in [r async for r in call]:
                r = pb.ProcessingResponse.FromString(b)
                if r.WhichOneof("response") == "request_headers":
                    for h in r.request_headers.response.header_mutation.set_headers:
                        if h.header.key == "x-gateway-destination-endpoint":
                            return h.header.raw_value.decode()
            return ""

        return self.call(go(), 15)

    def settled(self, timeout: float = 10.0) -> Accounting:
        """Accounting once the server has finished every stream (cancels are processed asynchronously)."""
        deadline = time.monotonic() + timeout
        acc = self.accounting()
        while not acc.clean and time.monotonic() < deadline:
            time.sleep(0.1)
            acc = self.accounting()
        return acc

    def accounting(self) -> Accounting:
        raise NotImplementedError

    def picks(self) -> int:
        """Requests the EPP routed to an endpoint (each added in-flight load the fuzz must see released)."""
        raise NotImplementedError

    def errors(self) -> list[str]:
        raise NotImplementedError

    def rss(self) -> int:
        raise NotImplementedError


def completion_messages() -> list[bytes]:
    from envoy.config.core.v3 import base_pb2

    headers = {
        ":method": "POST",
        ":path": "/v1/completions",
        ":authority": "gw",
        ":scheme": "http",
        "content-type": "application/json",
    }
    req = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
            )
        )
    )
    req.protocol_config.request_body_mode = req.protocol_config.response_body_mode = 4
    body = orjson.dumps({"model": MODEL, "prompt": "after the fuzz", "max_tokens": 1})
    return [
        req.SerializeToString(),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)).SerializeToString(),
    ]


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


class InProcessEpp(FuzzTarget):
    """The EPP in this process (on the client loop too), scraping `static_endpoints` at the default interval."""

    def __init__(
        self, static_endpoints: list[str], config_text: str | None = None, body_limit: int = BODY_LIMIT
    ) -> None:
        self.static_endpoints, self.config_text, self.body_limit = static_endpoints, config_text, body_limit
        self.epp = None
        self._errors = _ErrorLog()

    def start(self) -> InProcessEpp:
        from epp.datalayer.static_source import parse_static_endpoints
        from epp.options import Options
        from epp.runner import Epp
        from epp.scheduling.config import load_config
        from epp.stack.processes import free_port

        spec = ",".join(self.static_endpoints)
        opts = Options(
            grpc_port=free_port(),
            grpc_health_port=free_port(),
            metrics_port=free_port(),
            secure_serving=False,
            static_endpoints=spec,
            max_request_body_bytes=self.body_limit,
        )
        logging.getLogger("epp").addHandler(self._errors)

        async def start() -> None:
            self.epp = Epp(opts, load_config(self.config_text), parse_static_endpoints(spec))
            await self.epp.start()
            self.channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{opts.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
            )

        self.call(start(), 30)
        return self

    def accounting(self) -> Accounting:
        async def read() -> Accounting:
            inflight = {
                e.name: (
                    e.inflight.requests,
                    e.inflight.prompt_tokens,
                    e.inflight.prefill_tokens,
                    e.inflight.prefill_requests,
                    e.inflight.long_prefills,
                    e.inflight.held_tokens,
                )
                for e in self.epp.datastore.endpoints()
            }
            running = 0.0
            for family in self.epp.metrics.registry.collect():
                for s in family.samples:
                    if s.name == "inference_objective_running_requests":
                        running += s.value
            return Accounting(inflight, running, self.epp.processor.active_streams)

        return self.call(read(), 10)

    def picks(self) -> int:
        async def read() -> int:
            return sum(
                int(s.value)
                for f in self.epp.metrics.registry.collect()
                for s in f.samples
                if s.name == "inference_extension_scheduler_attempts_total" and s.labels.get("status") == "success"
            )

        return self.call(read(), 10)

    def errors(self) -> list[str]:
        return list(self._errors.records)

    def rss(self) -> int:
        import os

        return rss_bytes(os.getpid())

    def close(self) -> None:
        async def stop() -> None:
            await self.channel.close()
            await self.epp.stop(grace=0.5)

        try:
            if self.epp is not None:
                self.call(stop(), 30)
        finally:
            logging.getLogger("epp").removeHandler(self._errors)


class EppProgram(FuzzTarget):
    """The `epp` program (plaintext ext_proc), for RSS of the EPP alone and crash = exit."""

    def __init__(self, stack: Stack, static_endpoints: list[str], *args: str, body_limit: int = BODY_LIMIT) -> None:
        self.stack, self.static_endpoints, self.args, self.body_limit = stack, static_endpoints, args, body_limit
        self.proc: EppProcess | None = None

    def start(self) -> EppProgram:
        self.proc = self.stack.epp(
            f"--max-request-body-bytes={self.body_limit}",
            *self.args,
            static_endpoints=self.static_endpoints,
            tls=False,
            name="epp-fuzz",
        )

        async def connect() -> None:
            self.channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{self.proc.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]
            )

        self.call(connect(), 10)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.alive

    def accounting(self) -> Accounting:
        text = httpx.get(self.proc.metrics_url, timeout=10).text
        inflight: dict[str, tuple[int, ...]] = {}
        for line in text.splitlines():
            for name in ("epp_endpoint_inflight_requests", "epp_endpoint_inflight_prompt_tokens"):
                if line.startswith(name + "{"):
                    ep = line.split('endpoint="', 1)[1].split('"', 1)[0]
                    inflight[ep] = (*inflight.get(ep, ()), int(float(line.rsplit(" ", 1)[1])))
        return Accounting(inflight, sample_value(text, "inference_objective_running_requests"))

    def picks(self) -> int:
        return sum(read_picks(self.proc.metrics_url).values())

    def errors(self) -> list[str]:
        """Each error in the EPP's log with what follows it (its traceback, the task asyncio
        names) up to the next timestamped line: what is needed to find the cause."""
        log = self.proc.proc.log_tail(100_000) if self.proc else ""
        out: list[str] = []
        block: list[str] | None = None
        for line in log.splitlines():
            starts = line[:4].isdigit()  # "2026-..." : a new log record
            if " ERROR " in line or '"error"' in line or ("Traceback" in line and block is None):
                block = [line]
                out.append("")
            elif starts:
                block = None
            elif block is not None:
                block.append(line.strip())
            if block is not None:
                out[-1] = " | ".join(block)
        return out

    def rss(self) -> int:
        return rss_bytes(self.proc.pid) if self.alive else 0

    def close(self) -> None:
        async def stop() -> None:
            await self.channel.close()

        self.call(stop(), 10)


@dataclass
class FuzzTally:
    streams: int = 0
    cancelled: int = 0
    grpc_codes: dict[str, int] = field(default_factory=dict)
    immediate: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    bytes_sent: int = 0

    def add(self, stream: FuzzStream, out: StreamOutcome) -> None:
        self.streams += 1
        self.cancelled += stream.cancel_after is not None
        self.grpc_codes[out.code.name] = self.grpc_codes.get(out.code.name, 0) + 1
        for s in out.immediate:
            self.immediate[s] = self.immediate.get(s, 0) + 1
        self.slowest_s = max(self.slowest_s, out.seconds)
        self.bytes_sent += stream.size
        if out.problems and len(self.failures) < 20:
            self.failures.append(f"{out.problems}: {_describe(stream)}")


def _describe(stream: FuzzStream) -> str:
    parts = []
    for m in stream.messages:
        try:
            kind = pb.ProcessingRequest.FromString(m).WhichOneof("request")
        except DecodeError:
            kind = None
        parts.append(kind or f"raw{m[:12]!r}")
    return f"{parts} cancel_after={stream.cancel_after}"


def run_fuzz(
    target: FuzzTarget,
    examples: int,
    seed: int = 13,
    bound: float = 10.0,
    progress: Callable[[FuzzTally], None] | None = None,
    every: int = 1000,
) -> FuzzTally:
    """`examples` hypothesis-generated streams, counted rather than stopped at the first problem."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from epp.bench.reliability.fuzzstreams import fuzz_streams

    tally = FuzzTally()

    @hseed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(fuzz_streams())
    def one(stream: FuzzStream) -> None:
        tally.add(stream, target.run(stream, bound))
        if progress is not None and tally.streams % every == 0:
            progress(tally)

    one()
    return tally

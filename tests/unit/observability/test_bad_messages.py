"""Corrupt protobuf on the ext_proc port: each stream is refused cleanly, the log stays short."""

from __future__ import annotations

import asyncio
import logging

import grpc

from epp.observability.logs import RateLimitedLog
from tests.support import extproc_client as xc

GARBAGE = [b"\xff\xff\xff\xff garbage", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 7, bytes(range(256))]


async def send_raw(port: int, payload: bytes) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        process = ch.stream_stream(
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        call = process(timeout=5)
        await call.write(payload)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def test_corrupt_messages_get_invalid_argument_and_a_rate_limited_one_line_log(epp_process):
    epp = epp_process()

    async def scenario():
        codes = [await send_raw(epp.grpc_port, GARBAGE[i % len(GARBAGE)]) for i in range(40)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{epp.grpc_port}") as ch:
            ok = await xc.run_stream(ch, [xc.request_headers(eos=True, method="GET", path="/v1/models")])
        return codes, ok

    codes, ok = asyncio.run(scenario())
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert ok, "a valid stream after the garbage got no answer"
    assert epp.proc.alive
    log = epp.log()
    assert "Traceback" not in log and "DecodeError" not in log
    lines = [line for line in log.splitlines() if "not a ProcessingRequest" in line]
    assert 1 <= len(lines) <= 2, lines


def test_rate_limited_log_counts_what_it_left_out(caplog):
    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        assert limited.warning("bad thing from %s", "a")
        for _ in range(5):
            assert not limited.warning("bad thing from %s", "b")
        now[0] += 10
        assert limited.warning("bad thing from %s", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing from a",
        "bad thing from c (5 more like this in the previous 10s not logged)",
    ]

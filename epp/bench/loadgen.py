"""Open-loop streaming load generator (aiohttp): one `Sample` per request.

Times are wall seconds measured with `time.perf_counter`; the caller converts them to simulated
seconds with the fleet's time scale. TTFT is the arrival of the first SSE chunk that carries
content (text or a chat delta), not the role-only first chat chunk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from epp.bench.workloads import BenchRequest


@dataclass(slots=True)
class Sample:
    index: int
    start: float  # wall time the request was sent, relative to the run's start
    status: int = 0  # HTTP status; 0 = no response (connection error or timeout)
    error: str = ""
    ttft: float | None = None
    e2e: float | None = None
    itls: list[float] = field(default_factory=list)  # gaps between content chunks
    output_tokens: int = 0  # from usage when present, else content chunks counted
    prompt_tokens: int = 0
    cached_tokens: int = 0
    pod: str = ""  # x-inference-pod of the answering server

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.e2e is not None


def _has_content(event: dict) -> bool:
    choices = event.get("choices")
    if not choices:
        return False
    c = choices[0]
    if c.get("text"):
        return True
    delta = c.get("delta")
    return bool(delta and delta.get("content"))


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    req: BenchRequest,
    sample: Sample,
    clock: Callable[[], float],
    body: bytes | None = None,
) -> None:
    t0 = clock()
    last = None
    chunks = 0
    try:
        headers = {"content-type": "application/json", **dict(req.headers)}
        async with session.post(url + req.path, data=body or orjson.dumps(req.body()), headers=headers) as resp:
            sample.status = resp.status
            sample.pod = resp.headers.get("x-inference-pod", "")
            if resp.status != 200:
                sample.error = (await resp.read())[:200].decode(errors="replace")
                return
            buf = b""
            async for data in resp.content.iter_any():
                now = clock()
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    event = orjson.loads(line[6:])
                    usage = event.get("usage")
                    if usage:
                        sample.output_tokens = usage.get("completion_tokens", 0)
                        sample.prompt_tokens = usage.get("prompt_tokens", 0)
                        details = usage.get("prompt_tokens_details") or {}
                        sample.cached_tokens = details.get("cached_tokens") or 0
                    if _has_content(event):
                        chunks += 1
                        if last is None:
                            sample.ttft = now - t0
                        else:
                            sample.itls.append(now - last)
                        last = now
            sample.e2e = clock() - t0
            if sample.output_tokens == 0:
                sample.output_tokens = chunks
            if sample.ttft is None:
                sample.error = "no content in the stream"
    except asyncio.CancelledError:
        sample.error = sample.error or "timeout"
        raise
    except (aiohttp.ClientError, ValueError, OSError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]


async def run_open_loop(
    url: str,
    requests: list[BenchRequest],
    arrivals_wall: list[float],
    deadline: float,
    progress: Callable[[int, int], None] | None = None,
    bodies: list[bytes] | None = None,
) -> list[Sample]:
    """Send request i at `arrivals_wall[i]` seconds after start; stop everything at `deadline` seconds.

    Requests still running at the deadline are cancelled and recorded as failures ("timeout").
    `bodies` (precomputed, e.g. token-id prompts) replace the requests' default JSON bodies.
    """
    samples = [Sample(i, a) for i, a in enumerate(arrivals_wall)]
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    start = time.perf_counter()

    def clock() -> float:
        return time.perf_counter() - start

    done = 0

    def finished(_: asyncio.Task) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, len(samples))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        tasks: list[asyncio.Task] = []

        async def launcher() -> None:
            for i, req in enumerate(requests):
                delay = arrivals_wall[i] - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                samples[i].start = clock()
                t = asyncio.create_task(
                    one_request(session, url, req, samples[i], clock, bodies[i] if bodies else None)
                )
                t.add_done_callback(finished)
                tasks.append(t)

        launch = asyncio.create_task(launcher())
        try:
            await asyncio.wait_for(asyncio.shield(launch), timeout=deadline)
            remaining = deadline - clock()
            if tasks and remaining > 0:
                await asyncio.wait(tasks, timeout=remaining)
        except TimeoutError:
            pass
        launch.cancel()
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(launch, *tasks, return_exceptions=True)
    for s in samples:
        if s.status == 0 and not s.error:
            s.error = "not sent before the deadline" if s.start > deadline else "timeout"
    return samples

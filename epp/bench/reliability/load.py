"""Closed-loop streaming clients through the gateway, for fault stages and the soak.

Each client sends a streaming completion, reads the SSE stream to its end, and sends the
next, until told to stop; every request is one `Outcome`. Prompts differ per request so
prefix affinity does not pin the load to a few endpoints, unless `shared_prefix` asks for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from epp.bench.reliability.stack import MODEL


@dataclass(slots=True)
class Outcome:
    start: float  # time.monotonic()
    end: float
    status: int  # 0: no HTTP answer
    port: int  # x-inference-port of the answering server (0: none)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)

    def between(self, t0: float, t1: float) -> list[Outcome]:
        return [o for o in self.outcomes if t0 <= o.start < t1]

    def failures(self, t0: float = float("-inf"), t1: float = float("inf")) -> int:
        return sum(not o.ok for o in self.between(t0, t1))


_PAD = " and then some more words to make the prompt longer"


def _body(client: int, n: int, max_tokens: int, shared_prefix: str, pad_chars: int = 0) -> bytes:
    prompt = f"{shared_prefix}client {client} request {n}: tell me about the number {client * 7919 + n}"
    if pad_chars:  # after the distinct part, so every block of it is a new prefix-index entry
        prompt += (_PAD * (pad_chars // len(_PAD) + 1))[:pad_chars]
    return orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True})


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, timeout: float) -> Outcome:
    t0 = time.monotonic()
    status, port, error = 0, 0, ""
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                status = resp.status
                port = int(resp.headers.get("x-inference-port", "0") or 0)
                data = await resp.read()
                if status == 200 and b"data: [DONE]" not in data:
                    error = "stream ended without [DONE]"
                elif status != 200:
                    error = data[:120].decode(errors="replace")
    except TimeoutError:
        error = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:120]
    return Outcome(t0, time.monotonic(), status, port, error)


async def closed_loop(
    url: str,
    clients: int,
    stop: asyncio.Event,
    result: LoadResult,
    *,
    max_tokens: int = 8,
    timeout: float = 10.0,
    shared_prefix: str = "",
    pad_chars: int = 0,
    pause: float = 0.0,
) -> LoadResult:
    """Run `clients` request loops against `url` (/v1/completions) until `stop` is set."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def loop(c: int) -> None:
            n = 0
            while not stop.is_set():
                result.outcomes.append(
                    await _one(
                        session, url + "/v1/completions", _body(c, n, max_tokens, shared_prefix, pad_chars), timeout
                    )
                )
                n += 1
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(loop(c) for c in range(clients)))
    return result


async def open_loop(
    url: str,
    rate: float,
    stop: asyncio.Event,
    result: LoadResult,
    *,
    max_tokens: int = 8,
    timeout: float = 10.0,
    shared_prefix: str = "",
    pad_chars: int = 0,
    max_outstanding: int = 512,
) -> LoadResult:
    """`rate` requests per second at fixed intervals until `stop` is set (the soak's load).

    A request that cannot start because `max_outstanding` are already running is recorded as a
    failure ("overload"): the rate was more than the stack sustains.
    """
    connector = aiohttp.TCPConnector(limit=0)
    running: set[asyncio.Task] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        start = time.monotonic()
        n = 0
        while not stop.is_set():
            due = start + n / rate
            now = time.monotonic()
            if due > now:
                try:
                    await asyncio.wait_for(stop.wait(), due - now)
                    break
                except TimeoutError:
                    pass
            if len(running) >= max_outstanding:
                t = time.monotonic()
                result.outcomes.append(Outcome(t, t, 0, 0, "overload"))
            else:
                task = asyncio.create_task(
                    _one(
                        session,
                        url + "/v1/completions",
                        _body(n % 1000, n, max_tokens, shared_prefix, pad_chars),
                        timeout,
                    )
                )
                running.add(task)
                task.add_done_callback(lambda t: (running.discard(t), result.outcomes.append(t.result())))
            n += 1
        if running:
            await asyncio.wait(running)
    return result

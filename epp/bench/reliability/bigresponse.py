"""Stage `big-response`: an 80 MB non-streamed response passes while other picks go on.

Issue 13 found such a body (an embeddings batch) buffered and parsed on the event loop,
holding every other pick for up to 1.1 s. Two fake servers (badservers.py `big`) behind the
EPP and Envoy; a client downloads the 80 MB /v1/embeddings answer through Envoy (the EPP sees
every byte in FULL_DUPLEX_STREAMED) while picks are probed straight over ext_proc at 50/s.
Bound: those picks' p99 < 50 ms. The downloads run in a process of their own: reading 80 MB
on the probe's event loop would delay the probe itself, not the EPP.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import orjson

from epp.bench.reliability import clientloop
from epp.bench.reliability.pickprobe import measure_picks, probe_picks
from epp.bench.reliability.stack import MODEL, Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult
from epp.stack.processes import free_ports

BIG_MB = 80
MAX_P99_MS = 50.0


async def _downloads(url: str, n: int) -> list[tuple[int, int, float]]:
    """(status, bytes, seconds) of n sequential downloads."""
    out = []
    body = orjson.dumps({"model": MODEL, "input": ["embed me"] * 8})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        for _ in range(n):
            t0 = time.monotonic()
            async with s.post(url + "/v1/embeddings", data=body, headers={"content-type": "application/json"}) as r:
                size = 0
                async for chunk in r.content.iter_any():
                    size += len(chunk)
                out.append((r.status, size, time.monotonic() - t0))
    return out


def _downloads_in_process(url: str, n: int) -> list[tuple[int, int, float]]:
    return asyncio.run(_downloads(url, n))


async def _during(grpc_port: int, url: str, n: int):
    stop = asyncio.Event()
    probe = asyncio.create_task(probe_picks(grpc_port, rate=50, seconds=600, stop=stop))
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            downloads = await asyncio.get_running_loop().run_in_executor(pool, _downloads_in_process, url, n)
    finally:
        stop.set()
    return downloads, await probe


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    n = 1 if cfg.quick else 5
    res = StageResult("big-response", f"An {BIG_MB} MB non-streamed response ({n} transfer{'s' * (n > 1)})")
    with Stack(workdir) as st:
        ports = free_ports(2)
        st.bad_servers("big", ports, "--big-mb", str(BIG_MB))
        epp = st.epp(static_endpoints=[f"127.0.0.1:{p}" for p in ports], tls=False)
        gw = st.envoy(epp)
        baseline = measure_picks(epp.grpc_port, rate=50, seconds=5)
        progress(f"big-response: baseline pick p99 {baseline.pct(99)} ms; downloading {n} x {BIG_MB} MB")
        downloads, during = clientloop.run(_during(epp.grpc_port, gw.url, n), 600)
    ok = [d for d in downloads if d[0] == 200 and d[1] >= BIG_MB * 1_000_000]
    res.check(
        "transfers complete (HTTP 200, every byte)", f"{len(ok)} of {len(downloads)}", "all", len(ok) == len(downloads)
    )
    res.figure("transfer time through Envoy + EPP", ", ".join(f"{d[2]:.2f} s" for d in downloads))
    res.figure(
        "other picks before: count / p50 / p99 / max",
        f"{baseline.count} / {baseline.pct(50)} / {baseline.pct(99)} / {baseline.pct(100)} ms",
    )
    res.check(
        "other picks while it passes: p99",
        f"{during.pct(99)} ms (p50 {during.pct(50)}, max {during.pct(100)}, "
        f"{during.count} picks, {during.errors} errors)",
        f"< {MAX_P99_MS:g} ms",
        during.count > 0 and during.errors == 0 and (during.pct(99) or 0) < MAX_P99_MS,
    )
    return res

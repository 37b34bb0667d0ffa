"""Stage `soak`: the highest rate this box sustains through Envoy, for 10 minutes; no failures, no leaks.

Rate: a short closed-loop run (48 streaming clients) measures what the whole stack — Envoy,
EPP, two `epp-sim --replicas 4` processes and this load generator, all on the same cores —
completes per second; the soak then sends 80 % of that, open loop, so a slowdown shows as
failures instead of a lower rate. Prompts are distinct and ~600 characters, so the prefix
index fills (the simulators report 2,048 KV blocks each, which bounds it) early in the run.
The EPP's RSS and open file descriptors are sampled every 5 s; slopes are fitted over the
second half of the run, after the index is full. Bounds: 0 failures, RSS slope ≤ 0.1 MB/min,
fd count flat.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from epp.bench.reliability.load import LoadResult, closed_loop, open_loop
from epp.bench.reliability.picks import sample_value
from epp.bench.reliability.procsample import Sampler, second_half, slope_per_minute
from epp.bench.reliability.stack import EppProcess, Gateway, Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult
from epp.bench.summary import percentile

PAD_CHARS = 600
MAX_RSS_SLOPE = 0.1  # MB/min
CALIBRATION_CLIENTS = 48
INDEX = "inference_extension_prefix_indexer_size"


async def _calibrate(gw: Gateway, seconds: float) -> float:
    stop, load = asyncio.Event(), LoadResult()
    task = asyncio.create_task(closed_loop(gw.url, CALIBRATION_CLIENTS, stop, load, pad_chars=PAD_CHARS))
    await asyncio.sleep(2.0)
    t0, n0 = time.monotonic(), sum(o.ok for o in load.outcomes)
    await asyncio.sleep(seconds)
    rate = (sum(o.ok for o in load.outcomes) - n0) / (time.monotonic() - t0)
    stop.set()
    await task
    return rate


async def _soak(gw: Gateway, epp: EppProcess, rate: float, seconds: float, sampler: Sampler,
                progress: Progress) -> tuple[LoadResult, list[tuple[float, float]]]:
    stop, load = asyncio.Event(), LoadResult()
    task = asyncio.create_task(open_loop(gw.url, rate, stop, load, pad_chars=PAD_CHARS))
    index: list[tuple[float, float]] = []
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        next_report = 60.0
        while (elapsed := time.monotonic() - t0) < seconds:
            await asyncio.sleep(min(5.0, seconds - elapsed))
            text = (await http.get(epp.metrics_url)).text
            index.append((sampler.samples[-1].t if sampler.samples else 0.0, sample_value(text, INDEX)))
            if time.monotonic() - t0 >= next_report:
                next_report += 60.0
                s = sampler.samples[-1]
                progress(f"soak: {time.monotonic() - t0:.0f} s, {len(load.outcomes):,} requests, "
                         f"{load.failures():,} failed, RSS {s.rss_mb:.1f} MB, {s.fds} fds, index {index[-1][1]:,.0f}")
    stop.set()
    await task
    return load, index


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    minutes = cfg.soak_s / 60
    res = StageResult("soak", f"Soak: {minutes:g} minute{'s' * (minutes != 1)} at the highest sustained rate "
                              "through Envoy")
    with Stack(workdir) as st:
        sims = [st.sims(4, "--num-gpu-blocks", "2048") for _ in range(2)]
        epp = st.epp(static_endpoints=[hp for s in sims for hp in s.hostports])
        gw = st.envoy(epp)
        measured = asyncio.run(_calibrate(gw, 6.0 if cfg.quick else 15.0))
        rate = round(measured * 0.8, 1)
        progress(f"soak: the stack completes {measured:.0f} req/s with {CALIBRATION_CLIENTS} clients; "
                 f"soaking at {rate:.0f} req/s for {cfg.soak_s:g} s")
        sampler = Sampler(epp.pid, period_s=2.0 if cfg.quick else 5.0).start()
        load, index = asyncio.run(_soak(gw, epp, rate, cfg.soak_s, sampler, progress))
        samples = sampler.stop()
        alive = epp.proc.alive
    outcomes = load.outcomes
    failed = [o for o in outcomes if not o.ok]
    span = max(o.end for o in outcomes) - min(o.start for o in outcomes) if outcomes else 0.0
    top = max((v for _, v in index), default=0.0)
    full_at = next((t for t, v in index if v >= 0.98 * top), 0.0)
    tail = second_half(samples, full_at)
    rss_slope = slope_per_minute([(s.t, s.rss_mb) for s in tail])
    fd_slope = slope_per_minute([(s.t, s.fds) for s in tail])
    cpu = (samples[-1].cpu_s - samples[0].cpu_s) / (samples[-1].t - samples[0].t) if len(samples) > 1 else 0.0
    lat = [(o.end - o.start) * 1000 for o in outcomes if o.ok]
    res.figure("closed-loop capacity of the stack (48 clients)", f"{measured:.0f} req/s")
    res.figure("rate sent (open loop)", f"{rate:.0f} req/s, achieved {len(outcomes) / span:.1f} req/s" if span else rate)
    res.check("requests / failures", f"{len(outcomes):,} / {len(failed):,}", "0 failures", not failed and alive)
    res.figure("request latency p50 / p99 (streamed, 8 tokens)",
               f"{percentile(lat, 50) or 0:.0f} / {percentile(lat, 99) or 0:.0f} ms")
    res.figure("prefix index entries: peak, and when it reached 98 % of it", f"{top:,.0f} at {full_at:.0f} s")
    res.figure("EPP RSS start / end / peak", f"{samples[0].rss_mb:.1f} / {samples[-1].rss_mb:.1f} / "
               f"{max(s.rss_mb for s in samples):.1f} MB")
    res.check(f"EPP RSS slope over {tail[0].t:.0f}-{tail[-1].t:.0f} s" if tail else "EPP RSS slope",
              f"{rss_slope:+.3f} MB/min", f"≤ {MAX_RSS_SLOPE} MB/min", rss_slope <= MAX_RSS_SLOPE)
    fds = [s.fds for s in tail]
    res.check("EPP open fds over the same span: min / max / slope",
              f"{min(fds, default=0)} / {max(fds, default=0)} / {fd_slope:+.2f} per min", "flat",
              bool(fds) and fd_slope <= 0.5 and max(fds) - min(fds) <= 16)
    res.figure("EPP CPU", f"{cpu * 100:.0f} % of one core")
    if failed:
        kinds: dict[str, int] = {}
        for o in failed:
            key = o.error[:60] or f"HTTP {o.status}"
            kinds[key] = kinds.get(key, 0) + 1
        res.notes.append("failures: " + "; ".join(f"{k} x{v}" for k, v in sorted(kinds.items(), key=lambda x: -x[1])))
    res.notes.append("RSS samples (s, MB): " + ", ".join(f"{s.t:.0f}:{s.rss_mb:.1f}" for s in samples[:: max(1, len(samples) // 24)]))
    return res

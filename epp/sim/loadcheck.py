"""Measure how much streaming load one epp-sim process sustains.

    python -m epp.sim.loadcheck --replicas 16 --time-scale 0.1 --rate 200 --duration 20

Starts `epp-sim` as a child process (port 0, waits for its ready line), sends an
open-loop Poisson stream of streaming completions round-robin across the replicas for a
bounded time, and reports achieved request and token rates, wall-clock TTFT/ITL scaled
back to engine seconds next to what the cost model predicts, and the CPU the simulator
process used (from /proc, so it excludes this load generator). The simulator is not the
bottleneck when achieved ~= offered, its CPU stays well under one core, and scaled
latencies stay near the model's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time

import aiohttp

from epp.sim.costmodel import CostModel

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "routers",
    "pick",
    "endpoints",
    "by",
    "load",
    "and",
    "cache",
]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def _start_sim(args: argparse.Namespace) -> tuple[asyncio.subprocess.Process, list[str]]:
    cmd = [
        sys.executable,
        "-m",
        "epp.sim.cli",
        "--replicas",
        str(args.replicas),
        "--port",
        "0",
        "--time-scale",
        str(args.time_scale),
        "--max-num-seqs",
        str(args.max_num_seqs),
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    urls = []
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError("epp-sim exited before it was ready")
        if line.startswith("listening on "):
            urls.append(line.split()[2])
        elif line.startswith("epp-sim ready"):
            return proc, urls


async def _engine_means(session: aiohttp.ClientSession, urls: list[str]) -> dict[str, float]:
    """Mean TTFT/ITL as the replicas themselves report them (engine seconds)."""
    sums = {"ttft": [0.0, 0.0], "itl": [0.0, 0.0]}
    names = {"vllm:time_to_first_token_seconds": "ttft", "vllm:inter_token_latency_seconds": "itl"}
    for u in urls:
        async with session.get(u + "/metrics") as r:
            for line in (await r.text()).splitlines():
                for name, key in names.items():
                    if line.startswith(name + "_sum{"):
                        sums[key][0] += float(line.rsplit(" ", 1)[1])
                    elif line.startswith(name + "_count{"):
                        sums[key][1] += float(line.rsplit(" ", 1)[1])
    return {k: (s / c if c else float("nan")) for k, (s, c) in sums.items()}


async def run(args: argparse.Namespace) -> dict[str, float]:
    proc, urls = await _start_sim(args)
    rng = random.Random(1)
    ttfts: list[float] = []
    itls: list[float] = []
    errors = 0
    tokens = 0
    done = 0
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)

    async def one(session: aiohttp.ClientSession, url: str, prompt: str) -> None:
        nonlocal errors, tokens, done
        body = {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "prompt": prompt,
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        t0 = time.perf_counter()
        first = last = 0.0
        n = 0
        try:
            async with session.post(url + "/v1/completions", json=body) as r:
                if r.status != 200:
                    errors += 1
                    return
                async for chunk in r.content.iter_any():
                    now = time.perf_counter()
                    k = chunk.count(b'"text"')
                    if k and not first:
                        first = now
                    n += k
                    last = now
        except aiohttp.ClientError:
            errors += 1
            return
        if n:
            ttfts.append(first - t0)
            if n > 1:
                itls.append((last - first) / (n - 1))
        tokens += n
        done += 1

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        tasks = []
        scrapes = 0

        async def scrape_loop() -> None:
            # What the EPP's data layer does: GET /metrics on every replica each interval.
            nonlocal scrapes
            while True:
                t = time.perf_counter()
                for u in urls:
                    async with session.get(u + "/metrics") as r:
                        await r.read()
                    scrapes += 1
                await asyncio.sleep(max(0.0, args.scrape_interval - (time.perf_counter() - t)))

        scraper = asyncio.create_task(scrape_loop()) if args.scrape_interval > 0 else None
        cpu0, wall0, own0 = _cpu_seconds(proc.pid), time.perf_counter(), time.process_time()
        t_next = wall0
        i = 0
        while time.perf_counter() - wall0 < args.duration:
            t_next += rng.expovariate(args.rate)
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            prompt = " ".join(rng.choice(WORDS) for _ in range(args.prompt_words))
            tasks.append(asyncio.create_task(one(session, urls[i % len(urls)], prompt)))
            i += 1
        sent_window = time.perf_counter() - wall0
        await asyncio.gather(*tasks)
        if scraper is not None:
            scraper.cancel()
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds(proc.pid) - cpu0
        own_cpu = time.process_time() - own0
        engine_view = await _engine_means(session, urls)
    proc.terminate()
    await proc.wait()

    cost = CostModel()
    scale = args.time_scale
    # What the model says a lone request costs (prompt ~1.3 tokens/word + BOS).
    prompt_tokens = int(args.prompt_words * 1.0) + 1
    out = {
        "offered_rps": args.rate,
        "sent": i,
        "completed": done,
        "errors": errors,
        "achieved_rps": done / sent_window,
        "tokens_per_s": tokens / wall,
        "metrics_scrapes_per_s": scrapes / wall,
        "sim_cpu_percent": 100 * cpu / wall,
        "loadgen_cpu_percent": 100 * own_cpu / wall,
        "engine_ttft_mean_s": engine_view["ttft"],
        "engine_itl_mean_s": engine_view["itl"],
        "ttft_p50_engine_s": statistics.median(ttfts) / scale if ttfts else float("nan"),
        "ttft_p99_engine_s": sorted(ttfts)[int(0.99 * (len(ttfts) - 1))] / scale if ttfts else float("nan"),
        "itl_mean_engine_s": statistics.fmean(itls) / scale if itls else float("nan"),
        "model_ttft_idle_s": cost.frontend_latency + cost.prefill_seconds(prompt_tokens),
        "model_itl_idle_s": cost.decode_seconds(1, prompt_tokens),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m epp.sim.loadcheck")
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--time-scale", type=float, default=0.1)
    ap.add_argument("--rate", type=float, default=200.0, help="offered streaming requests per second (Poisson)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals (bounded)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=200)
    ap.add_argument(
        "--scrape-interval", type=float, default=0.05, help="GET /metrics on every replica this often (0 = off)"
    )
    ap.add_argument("--max-num-seqs", type=int, default=256)
    args = ap.parse_args(argv)
    if args.duration > 300 or args.rate * args.duration > 100_000:
        raise SystemExit("loadcheck is bounded: duration <= 300 s and <= 100k requests")
    res = asyncio.run(run(args))
    for k, v in res.items():
        print(f"{k:>22}: {v:.4g}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()

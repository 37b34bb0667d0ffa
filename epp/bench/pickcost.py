"""`epp-bench pickcost`: what one pick costs in process, by pool size, with the prefix index full.

The EPP's default config (epp-default.yaml) schedules against N endpoints whose metrics look
like a busy vLLM pool (queues, KV use, running requests drawn per endpoint). Before timing, the
approximate prefix index is filled to its bound: every endpoint holds its LRU capacity of blocks
(`blocks_per_server`, what a server's /metrics reports as its GPU blocks), so lookups walk a
full index. Each timed pick is what the director runs per request: produce (hash + match),
filters, scorers, picker, and pre_request (recording the pick in the index). Prompts are ~4,000
tokens sharing one of 200 system prompts, so matches are real and the index keeps churning.

Cost is wall time per pick on one thread (perf_counter_ns), p50/p99/max over `picks` picks after
a warm-up; the machine is shared, so runs are repeated and the range reported.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass

from epp.bench.summary import percentile
from epp.datalayer.endpoint import Endpoint, EndpointMetrics
from epp.scheduling import configs
from epp.scheduling.config import load_config
from epp.scheduling.plugins.prefix import ApproxPrefixCacheProducer
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.types import SchedulingRequest


@dataclass
class PickCost:
    endpoints: int
    blocks_per_server: int
    index_entries: int
    index_mb: float
    picks: int
    p50_us: float
    p99_us: float
    max_us: float
    repeat: int
    schedule_p50_us: float = 0.0  # produce + filters + scorers + picker
    schedule_p99_us: float = 0.0
    record_p50_us: float = 0.0  # pre_request: the pick recorded in the prefix index
    record_p99_us: float = 0.0


def _fleet(n: int, blocks: int, rng: random.Random) -> list[Endpoint]:
    eps = []
    now = time.monotonic()
    for k in range(n):
        ep = Endpoint(f"10.{k // 250}.{k % 250}.1:8000", f"10.{k // 250}.{k % 250}.1", 8000, pod_name=f"vllm-{k}")
        ep.metrics = EndpointMetrics(
            waiting_queue_size=rng.randint(0, 6),
            running_requests_size=rng.randint(4, 60),
            kv_cache_usage_percent=rng.uniform(0.2, 0.9),
            cache_block_size=16,
            cache_num_blocks=blocks,
            update_time=now + 3600,  # fresh for the whole run
        )
        eps.append(ep)
    return eps


def _prompt(rng: random.Random, systems: list[str]) -> bytes:
    return (rng.choice(systems) + " " + " ".join(str(rng.random()) for _ in range(40))).encode()


def measure(n: int, blocks: int = 2048, picks: int = 2000, warmup: int = 300, repeat: int = 1) -> PickCost:
    rng = random.Random(f"pickcost/{n}/{repeat}")
    sched = Scheduler(load_config(configs.text(configs.DEFAULT), "epp-default"))
    producer = next(p for p in sched.producers if isinstance(p, ApproxPrefixCacheProducer))
    eps = _fleet(n, blocks, rng)
    # Fill the index to its bound: each endpoint's LRU holds `blocks` blocks (distinct chains).
    bs = 16 * 4  # bytes per block at 16 tokens x 4 characters, as the producer hashes
    for ep in eps:
        base = rng.getrandbits(60)
        producer.index.add(ep.name, [base + j for j in range(blocks)], blocks)
    systems = [" ".join(f"w{rng.getrandbits(20)}" for _ in range(4000 * 4 // 8)) for _ in range(200)]
    assert len(systems[0]) > 100 * bs
    times: list[float] = []
    sched_t: list[float] = []
    rec_t: list[float] = []
    gc.collect()
    for i in range(warmup + picks):
        req = SchedulingRequest(
            f"r{i}", "m", incoming_model="m", prefix_input=_prompt(rng, systems), prompt_tokens=4000, stream=True
        )
        t0 = time.perf_counter_ns()
        result, cycle = sched.schedule(req, eps)
        t1 = time.perf_counter_ns()
        sched.pre_request(cycle, req, result)
        t2 = time.perf_counter_ns()
        if i >= warmup:
            times.append((t2 - t0) / 1000)
            sched_t.append((t1 - t0) / 1000)
            rec_t.append((t2 - t1) / 1000)
    return PickCost(
        n,
        blocks,
        len(producer.index),
        round(producer.index.memory_bytes / 1e6, 1),
        picks,
        round(percentile(times, 50) or 0, 1),
        round(percentile(times, 99) or 0, 1),
        round(max(times), 1),
        repeat,
        round(percentile(sched_t, 50) or 0, 1),
        round(percentile(sched_t, 99) or 0, 1),
        round(percentile(rec_t, 50) or 0, 1),
        round(percentile(rec_t, 99) or 0, 1),
    )


def table(points: list[PickCost]) -> str:
    out = [
        "| endpoints | blocks / server | index entries | index MB | picks | pick p50 µs | pick p99 µs | max µs "
        "| schedule p50 / p99 µs | record p50 / p99 µs | run |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        out.append(
            f"| {p.endpoints} | {p.blocks_per_server} | {p.index_entries:,} | {p.index_mb} | {p.picks} | "
            f"{p.p50_us} | {p.p99_us} | {p.max_us} | {p.schedule_p50_us} / {p.schedule_p99_us} | "
            f"{p.record_p50_us} / {p.record_p99_us} | {p.repeat} |"
        )
    return "\n".join(out)


def scrape_cost(endpoints: int, seconds: float = 10.0) -> str:
    """scrapebench's result line at the default 50 ms flag (the scrape budget applies), as printed."""
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "epp.datalayer.scrapebench",
            "--endpoints",
            str(endpoints),
            "--seconds",
            str(seconds),
            "--backend",
            "aiohttp",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    lines = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else f"scrapebench failed: {r.stderr.strip()[-300:]}"


def run(out_path, sizes=(10, 100, 1000), repeats: int = 2, picks: int = 2000) -> str:
    from epp.bench.results import git_commit, machine

    points = [measure(n, picks=picks, repeat=k + 1) for k in range(repeats) for n in sizes]
    scrapes = {n: scrape_cost(n) for n in (100, 1000)}
    m = machine()
    big = [p for p in points if p.endpoints == max(sizes)]
    per_entry = big[0].index_mb * 1e6 / max(big[0].index_entries, 1)
    text = "\n".join(
        [
            "# Pick cost by pool size, and scrape cost (`epp-bench pickcost`)",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} on {m['cpu']} ({m['cores']} cores), commit {git_commit()}. "
            "In process, one thread, the default config (epp-default.yaml), the approximate prefix index filled to "
            "its bound before timing (every endpoint's LRU at its capacity of blocks); a pick = produce + filters + "
            "scorers + picker (**schedule**) + pre_request (**record**: the pick written into the index), "
            "as the director runs per request. Prompts ~4,000 tokens over 200 system prompts.",
            "",
            table(points),
            "",
            f"Index memory at its bound: {per_entry:.0f} bytes per entry, so {big[0].index_mb} MB for "
            f"{max(sizes):,} endpoints x 2,048 blocks; at the default lruCapacityPerServer (31,250 blocks, a large "
            f"GPU) {max(sizes):,} endpoints would hold {max(sizes) * 31250 * per_entry / 1e9:.1f} GB "
            "(set lruCapacityPerServer, or let autoTune take each server's reported GPU blocks).",
            "",
            "## Scrape cost (scrapebench, aiohttp backend, --refresh-metrics-interval 50ms, the scrape budget on)",
            "",
            *[f"- {n} endpoints: `{line}`" for n, line in scrapes.items()],
            "",
            "CPU is this process's user+sys only (the page server runs in a child on the other core).",
            "",
        ]
    )
    out_path.write_text(text)
    return text

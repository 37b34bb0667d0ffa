"""Stage `1000-endpoints`: 1,000 static endpoints at the default scrape interval; picks stay fast.

Issue 13 found 1,000 endpoints at the default 50 ms interval leaving the EPP at 100 % CPU with
a pick p50 of 2.2 s. One child process (badservers.py `pages`) serves a realistic vLLM page
on 1,000 ports of 127.0.0.1; the EPP scrapes them all with its default flags (its scrape
budget stretches the interval, docs/datalayer.md) and picks are probed straight over
ext_proc at 20/s after a warm-up. Bound: pick p99 < 10 ms. Beside the default (pages fetched
and parsed in the scrape process) the same pool runs with `--metrics-scraper inline` and with
scraping off, in the same run, so the report shows what the scrape process buys. CPU is the
EPP's process tree (the scrape child included).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from epp.bench.procstat import tree_cpu_seconds
from epp.bench.reliability.pickprobe import measure_picks
from epp.bench.reliability.picks import sample_value
from epp.bench.reliability.stack import Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult
from epp.stack.processes import free_ports

ENDPOINTS = 1000
MAX_P99_MS = 10.0


def _measure(st: Stack, ports: list[int], args: list[str], warmup_s: float, seconds: float, progress: Progress):
    epp = st.epp(*args, static_endpoints=[f"127.0.0.1:{p}" for p in ports], tls=False)
    time.sleep(warmup_s)  # every endpoint scraped at least once
    interval = sample_value(httpx.get(epp.metrics_url, timeout=30).text, "epp_scrape_interval_seconds")
    progress(
        f"1000-endpoints {' '.join(args) or '(default flags)'}: scrape interval {interval:.3f} s; "
        f"probing picks for {seconds:g} s"
    )
    c0, t0 = tree_cpu_seconds(epp.pid), time.monotonic()
    probe = measure_picks(epp.grpc_port, rate=20, seconds=seconds)
    cpu = (tree_cpu_seconds(epp.pid) - c0) / (time.monotonic() - t0)
    text = httpx.get(epp.metrics_url, timeout=30).text
    epp.proc.stop()
    reachable = sum(
        1 for line in text.splitlines() if line.startswith("epp_endpoint_reachable{") and line.endswith(" 1.0")
    )
    return probe, interval, cpu, reachable


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    seconds = 10.0 if cfg.quick else 30.0
    warmup = 5.0 if cfg.quick else 10.0
    res = StageResult("1000-endpoints", f"{ENDPOINTS:,} endpoints at the default scrape interval")
    with Stack(workdir) as st:
        ports = free_ports(ENDPOINTS, consecutive=True)
        st.bad_servers("pages", ports)
        probe, interval, cpu, reachable = _measure(st, ports, [], warmup, seconds, progress)
        inline, _, inline_cpu, _ = _measure(st, ports, ["--metrics-scraper=inline"], warmup, seconds, progress)
        # The same pool with scraping out of the way: what scheduling 1,000 candidates costs alone.
        quiet, _, quiet_cpu, _ = _measure(st, ports, ["--refresh-metrics-interval=1h"], 3.0, seconds / 2, progress)
    res.figure("effective scrape interval (epp_scrape_interval_seconds)", f"{interval * 1000:.0f} ms")
    res.figure("endpoints the EPP counts as reachable", f"{reachable:,} of {ENDPOINTS:,}")
    res.figure("EPP CPU while scraping and picking (with its scrape process)", f"{cpu * 100:.0f} % of one core")
    res.check(
        "pick p99 (ext_proc round trip, 20 picks/s)",
        f"{probe.pct(99)} ms (p50 {probe.pct(50)}, max {probe.pct(100)}, {probe.count} picks, {probe.errors} errors)",
        f"< {MAX_P99_MS:g} ms",
        probe.count > 0 and probe.errors == 0 and (probe.pct(99) or 0) < MAX_P99_MS,
    )
    res.figure("distinct endpoints picked", len(probe.destinations))
    res.figure(
        "for comparison, scraping on the EPP's own loop (--metrics-scraper=inline): pick p50 / p99, EPP CPU",
        f"{inline.pct(50)} / {inline.pct(99)} ms, {inline_cpu * 100:.0f} %",
    )
    res.figure(
        "for comparison, scraping off (--refresh-metrics-interval=1h): pick p50 / p99, EPP CPU",
        f"{quiet.pct(50)} / {quiet.pct(99)} ms, {quiet_cpu * 100:.0f} %",
    )
    return res

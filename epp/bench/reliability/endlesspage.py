"""Stage `endless-metrics`: one endpoint's /metrics never ends; the EPP's memory must not follow it.

Issue 13 found the scraper reading such a page without limit (743 MB in 7 s). The EPP runs
with two epp-sim endpoints and one whose server streams valid metric lines forever; its RSS
is sampled every 0.5 s from before that server starts until the window ends, while picks
are probed. Bound: growth < 50 MB.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from epp.bench.reliability.pickprobe import measure_picks
from epp.bench.reliability.procsample import Sampler
from epp.bench.reliability.stack import Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult
from epp.stack.processes import free_port

MAX_GROWTH_MB = 50.0


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    window_s = 6.0 if cfg.quick else 20.0
    res = StageResult("endless-metrics", f"An endless /metrics page ({window_s:g} s)")
    with Stack(workdir) as st:
        sims = st.sims(2)
        bad = f"127.0.0.1:{free_port()}"
        epp = st.epp(static_endpoints=[*sims.hostports, bad], tls=False)
        sampler = Sampler(epp.pid, period_s=0.5).start()
        time.sleep(3.0)  # the bad endpoint refuses until its server starts: the baseline
        base = statistics.median(s.rss_mb for s in sampler.samples[-4:])
        st.bad_servers("endless", [int(bad.rsplit(":", 1)[1])])
        progress(f"endless-metrics: server up, EPP RSS {base:.0f} MB before")
        probe = measure_picks(epp.grpc_port, rate=20, seconds=window_s)
        alive = epp.proc.alive
        sampler.stop()
    peak = sampler.peak_rss_mb
    res.check(
        "EPP RSS growth while the page streams",
        f"{peak - base:.1f} MB ({base:.0f} → peak {peak:.0f} MB)",
        f"< {MAX_GROWTH_MB:g} MB",
        peak - base < MAX_GROWTH_MB,
    )
    res.check("EPP process alive afterwards", "yes" if alive else "no", "yes", alive)
    res.figure(
        "picks meanwhile: count / errors / p50 / p99",
        f"{probe.count} / {probe.errors} / {probe.pct(50)} ms / {probe.pct(99)} ms",
    )
    res.figure("picks sent to the endless-page endpoint", probe.destinations.get(bad, 0))
    return res

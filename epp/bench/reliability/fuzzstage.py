"""Stage `fuzz`: ≥ 20,000 fuzzed ext_proc streams against the `epp` program, scraping a real epp-sim fleet.

The same streams and checks as tests/reliability/test_fuzz_extproc.py, with another seed and
ten times as many, against the program rather than an in-process EPP: a crash is a dead
process, and RSS is the EPP's own. Problems are counted, not stopped at.
"""

from __future__ import annotations

import time
from pathlib import Path

from epp.bench.reliability.fuzz import EppProgram, FuzzTally, run_fuzz
from epp.bench.reliability.procsample import Sampler
from epp.bench.reliability.stack import Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    res = StageResult("fuzz", "Fuzzed ext_proc streams")
    with Stack(workdir) as st:
        sims = st.sims(2)
        target = EppProgram(st, sims.hostports).start()
        try:
            target.route_one()  # the first pick warms everything that is built lazily
            sampler = Sampler(target.proc.pid, period_s=5.0).start()
            rss_before = sampler.sample().rss_mb
            t0 = time.monotonic()

            def report(t: FuzzTally) -> None:
                rate = t.streams / (time.monotonic() - t0)
                progress(
                    f"fuzz: {t.streams:,} streams ({rate:.0f}/s), {len(t.failures)} with problems, "
                    f"EPP RSS {sampler.samples[-1].rss_mb:.0f} MB"
                )

            tally = run_fuzz(target, cfg.fuzz_streams, seed=cfg.seed, progress=report, every=2000)
            fuzz_s = time.monotonic() - t0
            alive = target.alive
            acc = target.settled() if alive else None
            routed = target.route_one() if alive else ""
            rss_after = sampler.sample().rss_mb if alive else 0.0
            sampler.stop()
            picks = target.picks() if alive else 0
            errors = target.errors()
        finally:
            target.close()
    hangs = sum("hang" in f for f in tally.failures)
    if cfg.quick:
        res.figure("streams sent (quick run; the bound is for 20,000)", tally.streams)
    else:
        res.check("streams sent", tally.streams, "≥ 20,000", tally.streams >= 20_000)
    res.figure("of them cancelled by the client mid-way", tally.cancelled)
    res.figure("requests the EPP routed (picks)", picks)
    res.figure("bytes sent", f"{tally.bytes_sent / 1e6:,.0f} MB")
    res.figure("streams per second", round(tally.streams / fuzz_s, 1))
    res.check("EPP process crashed", "no" if alive else "yes", "no", alive)
    res.check("streams not over within 10 s (hangs)", hangs, "0", hangs == 0)
    res.check(
        "streams with another problem (invalid response, unexpected gRPC status, 500)",
        len(tally.failures) - hangs,
        "0",
        len(tally.failures) == hangs,
    )
    res.check(
        "in-flight requests + prompt tokens still counted afterwards",
        sum(sum(v) for v in acc.inflight.values()) if acc else "n/a",
        "0",
        bool(acc and acc.clean),
    )
    res.check(
        "inference_objective_running_requests afterwards",
        acc.running if acc else "n/a",
        "0",
        bool(acc and acc.running == 0),
    )
    res.check(
        "a well-formed request afterwards is routed to",
        routed or "nothing",
        "a fleet endpoint",
        routed in sims.hostports,
    )
    res.figure("EPP RSS before / after / peak", f"{rss_before:.0f} / {rss_after:.0f} / {sampler.peak_rss_mb:.0f} MB")
    res.check("errors in the EPP log", len(errors), "0", not errors)
    res.figure("gRPC status of the streams", ", ".join(f"{k} {v:,}" for k, v in sorted(tally.grpc_codes.items())))
    res.figure("immediate responses", ", ".join(f"{k}: {v:,}" for k, v in sorted(tally.immediate.items())))
    res.figure("slowest stream", f"{tally.slowest_s:.2f} s")
    res.notes.append(
        "INTERNAL statuses are the client's own gRPC core reporting a write that raced the server's "
        "end of the stream (the server had answered and closed); they are accepted only then."
    )
    res.notes += [f"problem: {f[:300]}" for f in tally.failures[:5]]
    res.notes += [f"log: {e[-1500:]}" for e in errors[:3]]
    return res

"""`python -m epp.bench.reliability` (`make bench-reliability`, `epp-bench reliability`): every stage, then the report.

python -m epp.bench.reliability                      # all stages, full length (~25 min)
python -m epp.bench.reliability --quick              # all stages, shortened (development)
python -m epp.bench.reliability --only soak --soak-minutes 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from epp.bench.reliability import bigresponse, endlesspage, fuzzstage, killstage, modelnames, scale, soak
from epp.bench.reliability.report import write
from epp.bench.reliability.stageresult import RunConfig, StageFn, StageResult

STAGES: dict[str, StageFn] = {
    "fuzz": fuzzstage.run,
    "kill": killstage.run,
    "endless-metrics": endlesspage.run,
    "big-response": bigresponse.run,
    "model-names": modelnames.run,
    "soak": soak.run,
    "1000-endpoints": scale.run,
}
OUT = Path("bench/results/reliability.md")


def _progress(t0: float):
    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {text}", flush=True)

    return say


def _load(path: Path) -> dict[str, StageResult]:
    try:
        doc = json.loads(path.read_text())
        return {d["name"]: StageResult.from_dict(d) for d in doc["stages"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="epp-bench reliability", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default="", help=f"comma-separated stages ({', '.join(STAGES)}); default all")
    ap.add_argument(
        "--quick", action="store_true", help="short stages: 1,000 fuzzed streams, 5 s fault windows, a 1-minute soak"
    )
    ap.add_argument("--soak-minutes", type=float, default=None, help="soak length (default 10, quick 1)")
    ap.add_argument("--fuzz-streams", type=int, default=None, help="fuzzed streams (default 20,000, quick 1,000)")
    ap.add_argument("--seed", type=int, default=13, help="hypothesis seed for the fuzz")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"report path (default {OUT}, figures also in .json beside it; with --quick a temporary "
        "file, so the committed figures stay). With --only, other stages keep their last figures.",
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(STAGES)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        ap.error(f"unknown stage {', '.join(unknown)} (known: {', '.join(STAGES)})")
    cfg = RunConfig(
        quick=args.quick,
        fuzz_streams=args.fuzz_streams or (1000 if args.quick else 20_000),
        fault_window_s=5.0 if args.quick else 20.0,
        soak_s=60.0 * (args.soak_minutes if args.soak_minutes is not None else 1 if args.quick else 10),
        seed=args.seed,
    )

    out = args.out or (Path(tempfile.gettempdir()) / "reliability-quick.md" if args.quick else OUT)

    from epp.bench.results import git_commit, machine

    t0 = time.monotonic()
    say = _progress(t0)
    meta = {
        "machine": machine(),
        "commit": git_commit(),
        "date": date.today().isoformat(),
        "quick": cfg.quick,
        "command": "python -m epp.bench.reliability " + shlex.join(argv if argv is not None else sys.argv[1:]),
    }
    sidecar = out.with_suffix(".json")
    # With --only, the other stages keep the figures of the run that last measured them.
    kept = _load(sidecar) if args.only and sidecar.exists() else {}
    kept = {n: r for n, r in kept.items() if n not in names}
    if kept:
        # Each stage records its own run (date, commit); a note carried over from an older run
        # would go stale as soon as those stages are rerun one by one.
        meta["full_run"] = "the other stages keep the figures of their own last run (the table's measured column)"
    results: list[StageResult] = []

    def save() -> Path:
        merged = {**kept, **{r.name: r for r in results}}
        ordered = [merged[n] for n in STAGES if n in merged]
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps({"meta": meta, "stages": [r.to_dict() for r in ordered]}, indent=1) + "\n")
        return write(out, ordered, meta)

    with tempfile.TemporaryDirectory(prefix="epp-reliability-") as tmp:
        for name in names:
            say(f"stage {name}")
            s0 = time.monotonic()
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                r = STAGES[name](cfg, workdir, say)
            except Exception as exc:  # report what the other stages measured
                r = StageResult(name, name, error=f"{type(exc).__name__}: {exc}")
            r.seconds = time.monotonic() - s0
            r.run = {"date": meta["date"], "commit": meta["commit"]}
            results.append(r)
            say(
                f"stage {name}: {'error: ' + r.error if r.error else 'met' if r.passed else 'MISSED a bound'} "
                f"({r.seconds:.0f} s)"
            )
            for row in r.rows:
                say(
                    f"    {row.what}: {row.value}"
                    + (f"  [{row.bound}: {'ok' if row.ok else 'MISSED'}]" if row.ok is not None else "")
                )
            meta["wall_s"] = time.monotonic() - t0
            save()  # after every stage, so an interrupted run keeps what it measured
    meta["wall_s"] = time.monotonic() - t0
    path = save()
    say(f"wrote {path}; total {meta['wall_s'] / 60:.1f} minutes")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`epp-bench`: benchmarks that report numbers (never timed assertions in tests)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESULTS = Path("bench/results")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="epp-bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead", help="Envoy alone vs Envoy+EPP: req/s, added latency, EPP CPU and memory")
    o.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point (after 2 s warm-up)")
    o.add_argument("--connections", default="1,32")
    o.add_argument("--sizes", default="1024,204800", help="request body sizes in bytes")
    o.add_argument("--out", type=Path, default=RESULTS)
    o.add_argument("--epp-arg", action="append", default=[], help="extra flag for the EPP (repeatable)")
    args = p.parse_args(argv)
    if args.cmd == "overhead":
        from epp.bench.overhead import overhead_table, run_overhead

        try:
            points = run_overhead(args.seconds, tuple(int(c) for c in args.connections.split(",")),
                                  tuple(int(s) for s in args.sizes.split(",")), args.out, tuple(args.epp_arg))
        except RuntimeError as exc:
            sys.exit(f"epp-bench: {exc}")
        print()
        print(overhead_table(points))


if __name__ == "__main__":
    main()

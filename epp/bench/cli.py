"""`epp-bench`: benchmarks that report numbers (never timed assertions in tests).

epp-bench run [--workloads ...] [--routers ...]   live: routers + Envoy + epp-sim fleet
epp-bench des [--workloads ...] [--routers ...]   virtual time: engines + the EPP scheduler in-process
epp-bench ladder [--full] [--shapes ...]          the canonical warm ladder vs the peers, floor excess
epp-bench report [--render-only]                  the round-1 suite (live + des), then report.md + plots
epp-bench inference-perf                          cross-check with kubernetes-sigs/inference-perf
epp-bench overhead                                Envoy alone vs Envoy+EPP (requests and token streams)
epp-bench reliability [--quick] [--only ...]      issue 13's fuzz, faults, soak, 1,000 endpoints
epp-bench flowcontrol [--scenario ...] [--quick]  flow control live: priority, fairness, queueing
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import date
from pathlib import Path

RESULTS = Path("bench/results")
SUITE_WORKLOADS = ("shared-prefix", "sharegpt-like", "hot-prefix")
DES_WORKLOADS = ("shared-prefix", "sharegpt-like", "hot-prefix", "multi-lora", "long-prompt", "multi-turn")
DEFAULT_LOADS = "0.3,0.6,0.9,1.2"


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _add_common(p: argparse.ArgumentParser, workloads: tuple[str, ...], routers: str) -> None:
    p.add_argument("--workloads", default=",".join(workloads), help="comma-separated workload names")
    p.add_argument(
        "--routers",
        default=routers,
        help="comma-separated: epp, epp:<config file or named config>, envoy-rr, envoy-lr, "
        "smg-<policy>, vllm-router-<policy>",
    )
    p.add_argument("--loads", default=DEFAULT_LOADS, help="load points as fractions of fleet capacity")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--replicas", type=int, default=8)


def _meta(extra: dict) -> dict:
    from epp.bench.results import git_commit, machine

    return {
        "machine": machine(),
        "commit": git_commit(),
        "date": date.today().isoformat(),
        "command": "epp-bench " + shlex.join(sys.argv[1:]),
        **extra,
    }


def _epp_configs(routers) -> dict[str, str]:
    """The exact config text each EPP ran with, so virtual-time replays use the same policy."""
    from epp.scheduling import configs

    return {
        r.name: r.config.read_text() if r.config else configs.text(configs.DEFAULT) for r in routers if r.kind == "epp"
    }


def cmd_run(args: argparse.Namespace, out: Path) -> dict:
    from epp.bench.capacity import fleet_capacity
    from epp.bench.fingerprint import scheduler_fingerprint
    from epp.bench.live import LiveOptions, run_live, time_scale_for, workload_at
    from epp.bench.results import ResultFile
    from epp.bench.routers import parse_router

    opts = LiveOptions(
        loads=_floats(args.loads),
        seed=args.seed,
        replicas=args.replicas,
        max_wall_rps=args.max_wall_rps,
        drain_s=args.drain_s,
    )
    routers = [parse_router(r) for r in _names(args.routers)]
    caps, scales = {}, {}
    for w in _names(args.workloads):
        cap = fleet_capacity(workload_at(w, opts.seed * 1000, opts))
        caps[w], scales[w] = round(cap, 2), time_scale_for(max(opts.loads) * cap, opts)
    rf = ResultFile(
        out,
        _meta(
            {
                "mode": "live",
                "capacity": caps,
                "time_scales": scales,
                "skipped": {},
                "epp_configs": _epp_configs(routers),
                "scheduler_fingerprint": scheduler_fingerprint(),
            }
        ),
    )
    t0 = time.monotonic()
    skipped = run_live(_names(args.workloads), routers, opts, rf.add)
    rf.meta["skipped"] = skipped
    rf.meta["wall_s"] = round(time.monotonic() - t0)
    rf.save()
    print(f"wrote {out} ({len(rf.rows)} points, {rf.meta['wall_s']} s)")
    return rf.meta


def cmd_ladder(args: argparse.Namespace) -> None:
    from epp.bench import ladder, ladderreport
    from epp.bench.peers import PACKAGES, peer_version
    from epp.bench.results import ResultFile
    from epp.bench.results import load as load_results
    from epp.bench.routers import parse_router

    if args.render is not None:
        files = args.render or [args.out]
        print(f"wrote {ladderreport.render([load_results(f) for f in files], files[0].parent)}")
        return
    shapes = _names(args.shapes) if args.shapes else list(ladder.SHAPES if args.full else ladder.CANONICAL_SHAPES)
    names = (
        _names(args.routers) if args.routers else list(ladder.FULL_ROUTERS if args.full else ladder.CANONICAL_ROUTERS)
    )
    loads = _floats(args.loads) if args.loads else list(ladder.FULL_LOADS if args.full else ladder.DEFAULT_LOADS)
    opts = ladder.LadderOptions(
        shapes=shapes,
        loads=loads,
        seeds=[int(x) for x in args.seeds.split(",")],
        stage_requests=args.stage_requests,
        warmup_requests=args.warmup_requests,
        max_wall_rps=args.max_wall_rps,
    )
    specs = [parse_router(n) for n in names]
    est = ladder.wall_estimate(opts, len(specs))
    print(
        f"ladder: {len(shapes)} shapes x {len(specs)} routers x {len(opts.seeds)} seeds, about {est / 60:.0f} min",
        flush=True,
    )
    if args.plan_only:
        for shape in shapes:
            for seed in opts.seeds:
                pl = ladder.plan(shape, seed, opts)
                print(
                    f"  {shape} seed {seed}: capacity {pl.capacity:.2f} req/s, time scale {pl.time_scale}, "
                    "floor p90 per stage " + ", ".join(f"{ladder.percentile(f, 90):.3f}" for f in pl.floors)
                )
        return
    peers = {s.kind for s in specs if s.kind in PACKAGES}
    rf = ResultFile(
        args.out,
        _meta(
            {
                "mode": "ladder",
                "shapes": shapes,
                "routers": names,
                "seeds": opts.seeds,
                "loads": opts.loads,
                "stage_requests": opts.stage_requests,
                "epp_configs": _epp_configs(specs),
                "peer_versions": {},
            }
        ),
    )
    t0 = time.monotonic()
    rf.meta["skipped"] = ladder.run_ladder(specs, opts, rf.add, log=lambda s: print(s, flush=True))
    rf.meta["peer_versions"] = {k: peer_version(k) for k in sorted(peers)}
    rf.meta["wall_s"] = round(time.monotonic() - t0)
    rf.save()
    print(f"wrote {args.out} ({len(rf.rows)} stages, {rf.meta['wall_s']} s)")
    print(f"wrote {ladderreport.render([load_results(args.out)], args.out.parent)}")


def cmd_des(args: argparse.Namespace, out: Path) -> None:
    from epp.bench.capacity import fleet_capacity
    from epp.bench.des import des_router, run_ladder
    from epp.bench.live import LiveOptions, time_scale_for
    from epp.bench.results import ResultFile
    from epp.bench.workloads import make

    loads = _floats(args.loads)
    routers = [des_router(r) for r in _names(args.routers)]
    opts = LiveOptions(loads=loads, max_wall_rps=args.max_wall_rps)
    caps, scales = {}, {}
    rf = ResultFile(out, _meta({"mode": "des", "capacity": caps, "time_scales": scales}))
    t0 = time.monotonic()
    for w in _names(args.workloads):

        def mk(s: int, w: str = w):
            return make(w, s, replicas=args.replicas)

        cap = fleet_capacity(mk(args.seed * 1000))
        # Same scrape lag in simulated time as the live EPP has at the live run's time scale.
        ts = time_scale_for(max(loads) * cap, opts)
        caps[w], scales[w] = round(cap, 2), ts
        for row in run_ladder(mk, routers, loads, cap, args.seed, scrape_interval=0.05 / ts):
            rf.add(row)
    rf.meta["wall_s"] = round(time.monotonic() - t0, 1)
    rf.save()
    print(f"wrote {out} ({len(rf.rows)} points, {rf.meta['wall_s']} s)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="epp-bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    from epp.bench.routers import DEFAULT_ROUTERS

    r = sub.add_parser("run", help="live benchmark: routers + Envoy + epp-sim fleet")
    _add_common(r, SUITE_WORKLOADS, ",".join(DEFAULT_ROUTERS))
    r.add_argument(
        "--max-wall-rps",
        type=float,
        default=40.0,
        help="slow simulated time so the top load point sends at most this many requests per wall second",
    )
    r.add_argument("--drain-s", type=float, default=45.0, help="wall seconds a point may run after its last arrival")
    r.add_argument("--out", type=Path, default=RESULTS / "live.json")

    d = sub.add_parser("des", help="virtual time: epp-sim engines + the EPP scheduler in one process")
    _add_common(d, DES_WORKLOADS, "epp,epp:reference-default,envoy-rr,envoy-lr")
    d.add_argument("--max-wall-rps", type=float, default=40.0, help="as for `run`: sets the matching scrape lag")
    d.add_argument("--out", type=Path, default=RESULTS / "des.json")

    rep = sub.add_parser("report", help="run the committed suite (live + des), then write report.md and plots")
    rep.add_argument("--render-only", action="store_true", help="only re-render report.md and plots from the JSON")
    rep.add_argument("--results", type=Path, default=RESULTS)
    rep.add_argument("--routers", default=",".join(DEFAULT_ROUTERS))
    rep.add_argument("--repeat", action="store_true", help="also repeat the shared-prefix ladder (spread)")

    lad = sub.add_parser(
        "ladder",
        help="the canonical warm ladder: routers vs the floor, vs each other "
        "-> bench/results/ladder.{json,md} + ladder-<shape>.png",
    )
    lad.add_argument(
        "--full",
        action="store_true",
        help="all shapes and routers (~2.3 min per router, shape and seed) instead of the canonical set",
    )
    lad.add_argument(
        "--shapes", default=None, help="comma-separated: shared-prefix, cache-pressure, hot-prefix, sharegpt-like"
    )
    lad.add_argument("--routers", default=None, help="as for `run` (also sglang-router-<policy>)")
    lad.add_argument(
        "--loads",
        default=None,
        help="stages as fractions of fleet capacity (default 0.5,0.8,1.1; --full 0.3,0.5,0.8,1.1)",
    )
    lad.add_argument("--seeds", default="1,2")
    lad.add_argument("--stage-requests", type=int, default=300)
    lad.add_argument("--warmup-requests", type=int, default=200)
    lad.add_argument("--max-wall-rps", type=float, default=30.0)
    lad.add_argument("--out", type=Path, default=RESULTS / "ladder.json")
    lad.add_argument(
        "--render",
        type=Path,
        nargs="*",
        default=None,
        help="only render: merge these result files (default: the --out file) into ladder.md",
    )
    lad.add_argument("--plan-only", action="store_true", help="print capacities, time scales and wall estimate")

    pc = sub.add_parser(
        "pickcost",
        help="per-pick cost in process at 10/100/1,000 endpoints with the prefix index "
        "full, and scrape cost at 100/1,000 -> bench/results/pickcost.md",
    )
    pc.add_argument("--picks", type=int, default=2000)
    pc.add_argument("--repeats", type=int, default=2)

    ps = sub.add_parser(
        "poolscale", help="the warm ladder in virtual time at 8/32/128 replicas -> bench/results/poolscale.{json,md}"
    )
    ps.add_argument("--sizes", default="8,32,128")
    ps.add_argument("--seeds", default="1")
    ps.add_argument("--routers", default="epp,envoy-lr,envoy-rr", help="epp, epp:<config>, envoy-lr, envoy-rr")
    ps.add_argument("--shape", default="shared-prefix")
    ps.add_argument("--out", type=Path, default=RESULTS / "poolscale.json")
    ps.add_argument(
        "--live",
        nargs="+",
        type=Path,
        # The live ladder with both Envoy policies (envoy-lr ran only in the 12-02 peers run).
        default=[RESULTS / "ladder-2026-12-02" / "ladder.json", RESULTS / "ladder-2026-12-02" / "ladder-peers.json"],
        help="live ladder results whose router order at 8 replicas virtual time is checked against",
    )
    tc = sub.add_parser(
        "tracecost",
        help="per-request cost of tracing off / unsampled / on, beside the code before it -> "
        "bench/results/tracecost.md",
    )
    tc.add_argument("--rounds", type=int, default=5)
    tc.add_argument("--requests", type=int, default=3000)
    tc.add_argument("--baseline", default="0b9e97d", help="the commit to compare with (default: before --tracing)")
    ip = sub.add_parser("inference-perf", help="the same fleet driven by kubernetes-sigs/inference-perf")
    ip.add_argument("--router", default="epp")
    ip.add_argument("--rates", default="2,5")
    ip.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    ip.add_argument("--out", type=Path, default=RESULTS / "inference-perf")

    o = sub.add_parser("overhead", help="Envoy alone vs Envoy+EPP: req/s, added latency, EPP CPU and memory")
    o.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point (after 2 s warm-up)")
    o.add_argument("--connections", default="1,32")
    o.add_argument("--sizes", default="1024,204800", help="request body sizes in bytes")
    o.add_argument("--out", type=Path, default=RESULTS)
    o.add_argument("--epp-arg", action="append", default=[], help="extra flag for the EPP (repeatable)")
    o.add_argument(
        "--part",
        choices=("all", "requests", "streaming", "capacity"),
        default="all",
        help="requests: wrk points (overhead.md); streaming: token streams (streaming.md); capacity: "
        "ext_proc messages/s of one pinned EPP driven by h2load (capacity.md); all: all three",
    )
    o.add_argument("--streams", default="1,16,64,256", help="concurrent streaming clients per streaming point")
    o.add_argument("--chunks", type=int, default=64, help="tokens per streamed response")
    o.add_argument("--interval-ms", type=float, default=10.0, help="backend's gap between tokens")
    o.add_argument("--stream-seconds", type=float, default=10.0, help="measured seconds per streaming point")
    o.add_argument(
        "--transports",
        default="grpcio,h2corn,h2cornx2",
        help="EPP setups side by side: grpcio, h2corn (one process), h2cornxN (N workers)",
    )
    o.add_argument("--cancel", type=float, default=0.0, help="fraction of streams the clients cancel mid-response")
    o.add_argument("--epp-cpus", default=None, help="taskset CPU list for the EPP (e.g. 0)")
    o.add_argument("--other-cpus", default=None, help="taskset CPU list for Envoy, backend and load generator")
    o.add_argument("--envoy-concurrency", type=int, default=1)
    o.add_argument(
        "--plaintext", action="store_true", help="streaming: ext_proc without TLS (default: TLS, as deployed)"
    )

    fc = sub.add_parser(
        "flowcontrol",
        help="flow control live (priority, fairness, queueing) -> "
        "bench/results/flowcontrol.{json,md} and flowcontrol-<scenario>.png",
    )
    fc.add_argument(
        "--scenario", choices=("priority", "fairness", "queueing", "queueing-bounded", "all"), default="all"
    )
    fc.add_argument("--seeds", default="1", help="comma-separated seeds; every scenario runs once per seed")
    fc.add_argument(
        "--quick",
        action="store_true",
        help="smoke variant (~2 min): 2 configs per scenario, 2 simulated s per run, one queueing point; "
        "writes flowcontrol-quick.*",
    )
    fc.add_argument(
        "--duration",
        type=float,
        default=None,
        help="simulated seconds of arrivals per priority/fairness run (default 8, --quick 2)",
    )
    fc.add_argument(
        "--variants",
        default=None,
        help="comma-separated config names to run in every selected scenario (default: per scenario)",
    )
    fc.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="add or replace a config variant (repeatable); FILE is a path or a named config",
    )
    fc.add_argument("--replicas", type=int, default=8)
    fc.add_argument("--max-wall-rps", type=float, default=40.0)
    fc.add_argument("--drain-s", type=float, default=45.0, help="wall seconds a run may go on after its last arrival")
    fc.add_argument(
        "--server-args",
        default="",
        help="extra epp-sim flags for every fleet, e.g. '--max-num-seqs 16' (servers with a bounded batch)",
    )
    fc.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default bench/results/flowcontrol[-quick][-<scenario>].json)",
    )
    fc.add_argument("--render-only", action="store_true", help="re-render the Markdown and plots from the JSON")
    fc.add_argument("--print-configs", action="store_true", help="print every config variant and exit")
    fc.add_argument("--plan-only", action="store_true", help="print the planned requests and wall time, then exit")

    dr = sub.add_parser(
        "drain",
        help="flow control: how fast a queued backlog drains (in process) -> bench/results/flowcontrol-drain.md",
    )
    dr.add_argument("--requests", type=int, default=10_000)
    dr.add_argument("--endpoints", type=int, default=10)
    dr.add_argument("--repeats", type=int, default=3)

    kv = sub.add_parser(
        "kvcache",
        help="precise vs approximate prefix index under cache pressure, warm ladder -> bench/results/kvcache.md",
    )
    kv.add_argument("--shapes", default="pressure,low", help="pressure (73 %% of fleet KV), low (18 %%)")
    kv.add_argument(
        "--routers",
        default="approx,precise,approx-x2,precise-x2",
        help="approx, precise, approx-x2, precise-x2 (two active-active EPPs), envoy-lr, envoy-rr",
    )
    kv.add_argument("--loads", default="0.3,0.6,0.8,1.0,1.2", help="stages as fractions of fleet capacity")
    kv.add_argument("--stage-requests", type=int, default=300)
    kv.add_argument("--seeds", default="1")
    kv.add_argument("--max-wall-rps", type=float, default=30.0)
    kv.add_argument("--out", type=Path, default=RESULTS / "kvcache.json")
    kv.add_argument("--render-only", action="store_true")

    tk = sub.add_parser("tokenize", help="per-request cost of the precise index -> bench/results/tokenize.md")
    tk.add_argument("--requests", type=int, default=200)

    rel = sub.add_parser(
        "reliability",
        add_help=False,
        help="fuzz, faults under load, soak, 1,000 endpoints -> bench/results/reliability.md "
        "(epp-bench reliability --help)",
    )
    rel.add_argument("rest", nargs=argparse.REMAINDER)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["reliability"]:  # its own parser owns every flag after the name
        from epp.bench.reliability.__main__ import main as reliability_main

        sys.exit(reliability_main(argv[1:]))
    args = p.parse_args(argv)

    if args.cmd == "run":
        cmd_run(args, args.out)
    elif args.cmd == "des":
        cmd_des(args, args.out)
    elif args.cmd == "report":
        from epp.bench.report import write_report

        if not args.render_only:
            suite = ["--routers", args.routers]
            cmd_des(p.parse_args(["des"]), args.results / "des.json")
            cmd_run(p.parse_args(["run", *suite]), args.results / "live.json")
            if args.repeat:
                cmd_run(
                    p.parse_args(["run", "--workloads", "shared-prefix", "--routers", "epp,envoy-rr", "--seed", "1"]),
                    args.results / "live-repeat.json",
                )
        print(f"wrote {write_report(args.results)}")
    elif args.cmd == "poolscale":
        import json as _json
        import time as _time

        from epp.bench import poolscale

        opts = poolscale.ScaleOptions(
            shape=args.shape,
            sizes=tuple(int(x) for x in args.sizes.split(",")),
            routers=tuple(args.routers.split(",")),
            seeds=tuple(int(x) for x in args.seeds.split(",")),
        )
        t0 = _time.perf_counter()
        rows = poolscale.run(opts)
        wall = _time.perf_counter() - t0
        args.out.write_text(
            _json.dumps({"meta": {"wall_s": round(wall, 1), "shape": opts.shape}, "rows": rows}, indent=1)
        )
        live = poolscale.load_live(args.live)
        text = poolscale.render(rows, opts, live, wall)
        args.out.with_suffix(".md").write_text(text)
        print(text)
    elif args.cmd == "tracecost":
        from epp.bench.tracecost import run as run_tracecost

        print(
            run_tracecost(RESULTS / "tracecost.md", rounds=args.rounds, requests=args.requests, baseline=args.baseline)
        )
    elif args.cmd == "pickcost":
        from epp.bench.pickcost import run as run_pickcost

        print(run_pickcost(RESULTS / "pickcost.md", repeats=args.repeats, picks=args.picks))
    elif args.cmd == "ladder":
        cmd_ladder(args)
    elif args.cmd == "kvcache":
        from epp.bench import kvreport
        from epp.bench.kvbench import KvOptions, run_kvcache
        from epp.bench.kvbench import routers as kv_routers
        from epp.bench.results import load as load_results

        if not args.render_only:
            t0 = time.monotonic()
            from epp.bench.results import ResultFile

            rf = ResultFile(
                args.out, _meta({"mode": "kvcache", "configs": _epp_configs(kv_routers(_names(args.routers)))})
            )
            specs = kv_routers(_names(args.routers))
            for seed in (int(x) for x in args.seeds.split(",")):
                run_kvcache(
                    specs,
                    KvOptions(
                        shapes=_names(args.shapes),
                        loads=_floats(args.loads),
                        stage_requests=args.stage_requests,
                        seed=seed,
                        max_wall_rps=args.max_wall_rps,
                    ),
                    rf.add,
                    log=lambda s: print(s, flush=True),
                )
            rf.meta["wall_s"] = round(time.monotonic() - t0, 1)
            rf.save()
        print(f"wrote {kvreport.render(load_results(args.out), args.out.parent, args.out.stem)}")
    elif args.cmd == "tokenize":
        from epp.bench.tokenbench import run as run_tokenize

        print(run_tokenize(args.requests, RESULTS / "tokenize.md"))
    elif args.cmd == "drain":
        from epp.bench import drain

        drain.main(args.requests, args.endpoints, args.repeats)
    elif args.cmd == "flowcontrol":
        from epp.bench import flowbench

        flowbench.main(args, _meta, RESULTS)
    elif args.cmd == "inference-perf":
        from epp.bench.inferenceperf import run_inference_perf

        try:
            run_inference_perf(args.router, _floats(args.rates), args.duration, args.out)
        except RuntimeError as exc:
            sys.exit(f"epp-bench: {exc}")
    elif args.cmd == "overhead":
        from epp.bench.overhead import overhead_table, run_overhead
        from epp.bench.streaming import run_streaming, streaming_table

        if args.part in ("all", "requests"):
            try:
                points = run_overhead(
                    args.seconds,
                    tuple(int(c) for c in args.connections.split(",")),
                    tuple(int(s) for s in args.sizes.split(",")),
                    args.out,
                    tuple(args.epp_arg),
                )
            except RuntimeError as exc:
                sys.exit(f"epp-bench: {exc}")
            print()
            print(overhead_table(points))
        if args.part in ("all", "capacity"):
            from epp.bench.extprocload import capacity_table, run_capacity

            try:
                cpoints = run_capacity(
                    tuple(args.transports.split(",")),
                    out_dir=args.out,
                    epp_cpus=args.epp_cpus or "0",
                    other_cpus=args.other_cpus or "1",
                )
            except RuntimeError as exc:
                sys.exit(f"epp-bench: {exc}")
            print()
            print(capacity_table(cpoints, args.epp_cpus or "0", args.other_cpus or "1"))
        if args.part in ("all", "streaming"):
            spoints = run_streaming(
                tuple(int(s) for s in args.streams.split(",")),
                args.chunks,
                args.interval_ms,
                args.stream_seconds,
                tuple(args.transports.split(",")),
                args.cancel,
                args.out,
                args.epp_cpus,
                args.other_cpus,
                args.envoy_concurrency,
                tuple(args.epp_arg),
                tls=not args.plaintext,
            )
            print()
            print(streaming_table(spoints))


if __name__ == "__main__":
    main()

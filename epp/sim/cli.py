"""`epp-sim`: serve one or more simulated vLLM servers.

    epp-sim --replicas 4 --port 8000 --time-scale 0.1 --lora-modules sql,chat --max-loras 1

Prints "listening on http://HOST:PORT as POD" per replica, then
"epp-sim ready: N replicas"; a parent process waits for the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import fields

from epp.sim.costmodel import FLAG_FIELDS, CostModel
from epp.sim.engine import EngineConfig
from epp.sim.fleet import Fleet
from epp.sim.metrics import ENGINES
from epp.sim.server import ReplicaConfig


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="epp-sim", description="vLLM model-server simulator (OpenAI API, metrics, KV events)"
    )
    g = ap.add_argument_group("serving")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    g.add_argument(
        "--port", type=int, default=8000, help="port of replica 0; replica i uses port+i (0 = any free port each)"
    )
    g.add_argument("--replicas", type=int, default=1)
    g.add_argument("--pod-name-prefix", default="sim", help="replica i is named PREFIX-i (x-inference-pod header)")
    g.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    g.add_argument(
        "--served-model-name", nargs="+", default=None, help="names the base model answers to (default: --model)"
    )
    g.add_argument("--engine", choices=ENGINES, default="vllm", help="whose metric names /metrics uses")
    g.add_argument("--seed", type=int, default=0, help="generated tokens and fault injection derive from it")
    g.add_argument("--natural-output-len", type=int, default=256, help="mean EOS position when ignore_eos is false")

    g = ap.add_argument_group("engine (vLLM v1 scheduler)")
    d = EngineConfig()
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    g.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    g.add_argument("--num-gpu-blocks", type=int, default=d.num_gpu_blocks)
    g.add_argument("--block-size", type=int, default=d.block_size)
    g.add_argument("--max-model-len", type=int, default=None, help="default: min(131072, KV capacity)")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--lora-modules", default="", help="adapters served by every replica: a,b,c")
    g.add_argument(
        "--lora-modules-per-replica",
        default="",
        help='per-replica adapters overriding --lora-modules, e.g. "0:a,b;1:c;2:" '
        "(unlisted replicas keep --lora-modules)",
    )
    g.add_argument("--max-loras", type=int, default=d.max_loras, help="distinct adapters per batch (GPU slots)")

    g = ap.add_argument_group("cost model (milliseconds; see docs/simulator.md)")
    c = CostModel()
    for flag, name in FLAG_FIELDS.items():
        names = [flag] + (["--lora-load-time"] if name == "lora_load_ms" else [])
        g.add_argument(*names, dest=name, type=float, default=getattr(c, name))
    g.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per simulated second (0.1 = 10x faster)")

    g = ap.add_argument_group("faults")
    g.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests answered with HTTP 500")
    g.add_argument(
        "--slow-replica", action="append", default=[], metavar="IDX:FACTOR", help="multiply replica IDX step times"
    )

    g = ap.add_argument_group("KV events (vLLM ZMQ publisher)")
    g.add_argument("--kv-events-endpoint", default=None, help="tcp://127.0.0.1:PORT; replica i binds PORT+i")
    g.add_argument(
        "--kv-events-connect", action="store_true", help="connect every replica to the endpoint instead of binding"
    )
    g.add_argument(
        "--kv-events-topic", default="kv@{host}:{port}@{model}", help="template: {host} {port} {pod} {model}"
    )
    g.add_argument("--kv-events-format", choices=("array", "map"), default="array")
    g.add_argument(
        "--kv-events-replay-endpoint",
        default=None,
        help="tcp://127.0.0.1:PORT: a ROUTER socket answering replay requests; replica i binds PORT+i",
    )
    g.add_argument("--kv-events-buffer-steps", type=int, default=10_000, help="batches kept for replay")
    ap.add_argument(
        "--tokenizer-file",
        default=None,
        help="a Hugging Face tokenizer.json for prompts (python -m epp.sim.hftokenizer DIR builds one)",
    )
    ap.add_argument("--log-level", default="WARNING")
    return ap


def _split(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def configs_from_args(args: argparse.Namespace) -> list[ReplicaConfig]:
    if args.replicas < 1:
        raise SystemExit("--replicas must be >= 1")
    common = _split(args.lora_modules)
    per: dict[int, tuple[str, ...]] = {}
    for part in filter(None, (p.strip() for p in args.lora_modules_per_replica.split(";"))):
        idx, _, names = part.partition(":")
        per[int(idx)] = _split(names)
    slow: dict[int, float] = {}
    for s in args.slow_replica:
        idx, _, factor = s.partition(":")
        slow[int(idx)] = float(factor or 1.0)
    all_adapters: list[str] = []
    for names in [common, *per.values()]:
        all_adapters += [a for a in names if a not in all_adapters]
    lora_ids = tuple((a, i + 1) for i, a in enumerate(all_adapters))

    capacity = args.num_gpu_blocks * args.block_size
    max_model_len = args.max_model_len or min(131_072, capacity)
    engine = EngineConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_gpu_blocks=args.num_gpu_blocks,
        block_size=args.block_size,
        max_model_len=max_model_len,
        max_loras=args.max_loras,
        enable_prefix_caching=not args.no_prefix_caching,
        hash_seed=args.seed,
    )
    cost_kwargs = {f.name: getattr(args, f.name) for f in fields(CostModel) if f.name != "slowdown"}
    out = []
    for i in range(args.replicas):
        out.append(
            ReplicaConfig(
                index=i,
                host=args.host,
                port=args.port + i if args.port else 0,
                pod_name=f"{args.pod_name_prefix}-{i}",
                model=args.model,
                served_model_names=tuple(args.served_model_name or ()),
                lora_modules=per.get(i, common),
                engine=engine,
                cost=CostModel(**cost_kwargs, slowdown=slow.get(i, 1.0)),
                time_scale=args.time_scale,
                engine_kind=args.engine,
                seed=args.seed,
                fail_rate=args.fail_rate,
                natural_output_len=args.natural_output_len,
                kv_events_endpoint=args.kv_events_endpoint,
                kv_events_connect=args.kv_events_connect,
                kv_events_topic=args.kv_events_topic,
                kv_events_format=args.kv_events_format,
                kv_events_replay_endpoint=args.kv_events_replay_endpoint,
                kv_events_buffer_steps=args.kv_events_buffer_steps,
                tokenizer_file=args.tokenizer_file,
                lora_ids=lora_ids,
            )
        )
    return out


async def serve(configs: list[ReplicaConfig]) -> None:
    fleet = Fleet(configs)
    await fleet.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fleet.stop()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        configs = configs_from_args(args)
    except ValueError as e:
        print(f"epp-sim: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        asyncio.run(serve(configs))
    except OSError as e:
        print(f"epp-sim: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

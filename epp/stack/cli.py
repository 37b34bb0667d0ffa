"""`epp-stack` (what `make run` starts): an epp-sim fleet, the EPP, and a real gateway on 127.0.0.1:8081.

The gateway is Envoy (ext_proc), or with `--gateway nginx` NGINX + the NJS module of deploy/nginx,
asking `epp-bridge` (or, with `--nginx-picker epp`, the EPP's own HTTP picker port) for each pick.

Runs in the foreground and stops everything on Ctrl-C, or when any part dies (with its log).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from epp.bridge import nginxconf
from epp.stack import envoyconf
from epp.stack.processes import Proc, bin_path, wait_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="epp-stack", description=__doc__)
    p.add_argument("--gateway", choices=("envoy", "nginx"), default="envoy")
    p.add_argument("--envoy-config", choices=sorted(envoyconf.CONFIGS), default="original-dst")
    p.add_argument("--port", type=int, default=8081, help="gateway listen port")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--sim-port", type=int, default=8000, help="first simulator port (consecutive)")
    p.add_argument("--time-scale", default="1.0", help="simulator time scale (0.1 = 10x faster)")
    p.add_argument("--epp-port", type=int, default=9002)
    p.add_argument("--epp-health-port", type=int, default=9003)
    p.add_argument("--epp-metrics-port", type=int, default=9090)
    p.add_argument("--config-file", default="", help="EndpointPickerConfig for the EPP")
    p.add_argument(
        "--nginx-picker",
        choices=("bridge", "epp"),
        default="bridge",
        help="nginx: ask epp-bridge (ext_proc to the EPP) or the EPP's own HTTP picker port",
    )
    p.add_argument("--bridge-port", type=int, default=54800, help="nginx: epp-bridge port")
    p.add_argument("--picker-port", type=int, default=9004, help="nginx: the EPP's HTTP picker port")
    p.add_argument(
        "--failure-mode",
        choices=("close", "open"),
        default="close",
        help="nginx: without a pick, answer 5xx (close) or use any pool server (open)",
    )
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="epp-stack-"))
    sim_ports = list(range(args.sim_port, args.sim_port + args.replicas))
    procs: list[Proc] = []

    def stop_all(*_: object) -> None:
        for proc in reversed(procs):
            proc.stop()

    def on_term(*_: object) -> None:
        stop_all()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        sim = Proc(
            "epp-sim",
            [
                bin_path("epp-sim"),
                "--replicas",
                str(args.replicas),
                "--port",
                str(sim_ports[0]),
                "--model",
                MODEL,
                "--time-scale",
                args.time_scale,
            ],
            workdir / "sim.log",
        ).start()
        procs.append(sim)
        for port in sim_ports:
            wait_port(port, proc=sim.popen)
        print(f"epp-sim: {args.replicas} servers on 127.0.0.1:{sim_ports[0]}-{sim_ports[-1]}", flush=True)

        epp_args = [
            bin_path("epp"),
            "--static-endpoints",
            ",".join(f"127.0.0.1:{q}" for q in sim_ports),
            "--grpc-port",
            str(args.epp_port),
            "--grpc-health-port",
            str(args.epp_health_port),
            "--metrics-port",
            str(args.epp_metrics_port),
            "--health-checking",
        ]
        if args.config_file:
            epp_args += ["--config-file", args.config_file]
        if args.gateway == "nginx" and args.nginx_picker == "epp":
            epp_args += ["--http-picker-port", str(args.picker_port)]
        epp = Proc("epp", epp_args, workdir / "epp.log").start()
        procs.append(epp)
        wait_port(args.epp_port, proc=epp.popen)
        print(
            f"epp: ext_proc on 127.0.0.1:{args.epp_port} (TLS), metrics http://127.0.0.1:{args.epp_metrics_port}"
            "/metrics",
            flush=True,
        )

        if args.gateway == "nginx":
            start_nginx(args, sim_ports, workdir, procs)
        else:
            start_envoy(args, sim_ports, workdir, procs)
        print(
            f"Try:\n  curl -s http://127.0.0.1:{args.port}/v1/chat/completions -H 'content-type: application/json' \\\n"
            f'    -d \'{{"model":"{MODEL}","messages":[{{"role":"user","content":"Hello!"}}],'
            '"max_tokens":16}\' -i\n\nCtrl-C stops everything.',
            flush=True,
        )
        while all(proc.alive for proc in procs):
            time.sleep(0.5)
        dead = next(proc for proc in procs if not proc.alive)
        print(
            f"\n{dead.name} exited ({dead.popen.returncode if dead.popen else '?'}); "
            f"last log lines:\n{dead.log_tail()}",
            file=sys.stderr,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"epp-stack: {exc}", file=sys.stderr)
        for proc in procs:
            tail = proc.log_tail(15)
            if tail:
                print(f"--- {proc.name} log ---\n{tail}", file=sys.stderr)
        stop_all()
        sys.exit(1)
    finally:
        stop_all()


def start_envoy(args: argparse.Namespace, sim_ports: list[int], workdir: Path, procs: list[Proc]) -> None:
    conf = envoyconf.render(
        args.envoy_config,
        listen_port=args.port,
        admin_port=free_admin_port(),
        epp_port=args.epp_port,
        pool=[("127.0.0.1", q) for q in sim_ports],
    )
    conf_path = envoyconf.write(conf, workdir / "envoy.yaml")
    envoy = Proc(
        "envoy",
        [bin_path("envoy"), "-c", str(conf_path), "--concurrency", "1", "--log-level", "warn"],
        workdir / "envoy.log",
    ).start()
    procs.append(envoy)
    wait_port(args.port, proc=envoy.popen)
    print(f"envoy: gateway on http://127.0.0.1:{args.port} ({args.envoy_config}); logs in {workdir}\n")


def start_nginx(args: argparse.Namespace, sim_ports: list[int], workdir: Path, procs: list[Proc]) -> None:
    if args.nginx_picker == "epp":
        wait_port(args.picker_port, proc=procs[-1].popen)
        picker_url = f"http://127.0.0.1:{args.picker_port}/"
    else:
        bridge = Proc(
            "epp-bridge",
            [bin_path("epp-bridge"), "--port", str(args.bridge_port), "--metrics-port", str(args.bridge_port + 1)],
            workdir / "bridge.log",
        ).start()
        procs.append(bridge)
        wait_port(args.bridge_port, proc=bridge.popen)
        picker_url = f"http://127.0.0.1:{args.bridge_port}/"
        print(
            f"epp-bridge: http://127.0.0.1:{args.bridge_port}, metrics http://127.0.0.1:{args.bridge_port + 1}/metrics",
            flush=True,
        )
    prefix = workdir / "nginx"
    nginxconf.write(
        nginxconf.NginxSettings(
            listen_port=args.port,
            picker_url=picker_url,
            epp_port=args.epp_port,
            pool=[f"127.0.0.1:{q}" for q in sim_ports],
            failure_mode=args.failure_mode,
        ),
        prefix,
    )
    nginx = Proc("nginx", nginxconf.command(prefix), workdir / "nginx.out").start()
    procs.append(nginx)
    wait_port(args.port, proc=nginx.popen)
    print(
        f"nginx: gateway on http://127.0.0.1:{args.port} (picker {picker_url}, fail-{args.failure_mode}); "
        f"access log {prefix / 'access.log'}\n",
        flush=True,
    )


def free_admin_port() -> int:
    from epp.stack.processes import free_port

    return free_port()

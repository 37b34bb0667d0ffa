"""The routers under test, each started in front of a fleet and stopped by the harness (127.0.0.1 only).

* `epp` — this project's EPP behind real Envoy (deploy/envoy/original-dst.yaml, FULL_DUPLEX_STREAMED),
  with any EndpointPickerConfig file (`epp` alone = the EPP's built-in default).
* `envoy-rr`, `envoy-lr` — Envoy's own round-robin / least-request (the Kubernetes Service baselines).
* `smg-<policy>` (SGLang Model Gateway, `smg` package), `sglang-router-<policy>` (its 0.3.2
  predecessor), `vllm-router-<policy>` — the peer routers, installed into their own venvs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.bench.configs import resolve_config, with_local_kv_events
from epp.bench.peers import peer_binary
from epp.bench.simfleet import KV_EVENTS_OFFSET, KV_REPLAY_OFFSET, SimFleet
from epp.bench.workloads import MODEL
from epp.stack import envoyconf
from epp.stack.processes import Proc, bin_path, free_port, wait_port

DEFAULT_ROUTERS = (
    "epp",
    "envoy-rr",
    "envoy-lr",
    "smg-cache_aware",
    "smg-power_of_two",
    "vllm-router-cache_aware",
    "vllm-router-power_of_two",
)


@dataclass(frozen=True)
class RouterSpec:
    name: str  # label in results
    kind: str  # epp | envoy | smg | sglang-router | vllm-router
    policy: str = ""  # envoy lb / peer policy
    config: Path | None = None  # EndpointPickerConfig for kind == "epp"
    # vllm-router's cache_aware hashes token ids and cannot tokenize text without a HF tokenizer
    # (it records `missing_tokens` and falls back): give it the prompt as token ids, its best case.
    token_ids: bool = False
    epp_args: tuple[str, ...] = ()  # extra EPP flags, e.g. ("--static-objectives", "critical=100")
    epp_replicas: int = 1  # active-active EPPs behind one Envoy ext_proc cluster


@dataclass
class RunningRouter:
    spec: RouterSpec
    url: str
    procs: list[Proc] = field(default_factory=list)
    metrics_url: str = ""  # the EPP's Prometheus endpoint (kind == "epp")
    epps: list[Proc] = field(default_factory=list)  # kind == "epp": its EPP processes

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def parse_router(text: str) -> RouterSpec:
    """`epp`, `epp:<config file or named config>`, `envoy-rr`, `envoy-lr`, `smg-<policy>`, `vllm-router-<policy>`."""
    if text == "epp":
        return RouterSpec("epp", "epp")
    if text.startswith("epp:"):
        path = resolve_config(text[4:])
        return RouterSpec(f"epp[{path.stem}]", "epp", config=path.resolve())
    if text in ("envoy-rr", "envoy-lr"):
        return RouterSpec(text, "envoy", "round_robin" if text == "envoy-rr" else "least_request")
    if text.startswith("smg-"):
        return RouterSpec(text, "smg", text[4:])
    if text.startswith("sglang-router-"):
        return RouterSpec(text, "sglang-router", text[len("sglang-router-") :])
    if text.startswith("vllm-router-"):
        return RouterSpec(text, "vllm-router", text[len("vllm-router-") :], token_ids=True)
    raise ValueError(f"unknown router {text!r}")


def _envoy(conf: dict, workdir: Path, name: str, procs: list[Proc]) -> None:
    path = envoyconf.write(conf, workdir / f"{name}.yaml")
    port = conf["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    p = Proc(
        name,
        [bin_path("envoy"), "-c", str(path), "--concurrency", "1", "--log-level", "error", "--base-id", str(port)],
        workdir / f"{name}.log",
    ).start()
    procs.append(p)
    wait_port(port, proc=p.popen, timeout=30)


def start_router(spec: RouterSpec, fleet: SimFleet, workdir: Path) -> RunningRouter:
    procs: list[Proc] = []
    epps: list[Proc] = []
    pool = [("127.0.0.1", p) for p in fleet.ports]
    port = free_port()
    metrics_url = ""
    try:
        if spec.kind == "envoy":
            conf = envoyconf.render(
                "original-dst",
                listen_port=port,
                admin_port=free_port(),
                epp_port=free_port(),
                pool=pool,
                lb=spec.policy,
            )
            _envoy(conf, workdir, f"envoy-{port}", procs)
        elif spec.kind == "epp":
            config = spec.config
            if config is not None and fleet.kv_events:
                config = with_local_kv_events(config, workdir, KV_EVENTS_OFFSET, KV_REPLAY_OFFSET)
            grpc_ports = []
            for _ in range(spec.epp_replicas):
                g, h, m = free_port(), free_port(), free_port()
                metrics_url = metrics_url or f"http://127.0.0.1:{m}/metrics"
                args = [
                    bin_path("epp"),
                    "--static-endpoints",
                    ",".join(f"127.0.0.1:{p}" for p in fleet.ports),
                    "--grpc-port",
                    str(g),
                    "--grpc-health-port",
                    str(h),
                    "--metrics-port",
                    str(m),
                    "--health-checking",
                    "-v=1",
                ]
                if config is not None:
                    args += ["--config-file", str(config)]
                args += list(spec.epp_args)
                epp = Proc("epp", args, workdir / f"epp-{g}.log").start()
                procs.append(epp)
                epps.append(epp)
                wait_port(g, proc=epp.popen, timeout=30)
                grpc_ports.append(g)
            conf = envoyconf.render(
                "original-dst",
                listen_port=port,
                admin_port=free_port(),
                epp_port=grpc_ports[0],
                more_epp_ports=tuple(grpc_ports[1:]),
            )
            _envoy(conf, workdir, f"envoy-{port}", procs)
        elif spec.kind in ("smg", "sglang-router", "vllm-router"):
            exe = peer_binary(spec.kind)
            head = [exe] if spec.kind == "vllm-router" else [exe, "launch"]
            args = [
                *head,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--prometheus-host",
                "127.0.0.1",
                "--prometheus-port",
                str(free_port()),
                "--policy",
                spec.policy,
                "--worker-startup-check-interval",
                "1",
                "--log-level",
                "error",
                "--worker-urls",
                *fleet.urls,
            ]
            p = Proc(spec.kind, args, workdir / f"{spec.kind}-{port}.log").start()
            procs.append(p)
            wait_port(port, proc=p.popen, timeout=60)
        else:
            raise ValueError(spec.kind)
        url = f"http://127.0.0.1:{port}"
        _wait_routable(url, procs)
    except BaseException:
        for p in reversed(procs):
            p.stop()
        raise
    return RunningRouter(spec, url, procs, metrics_url, epps)


def _wait_routable(url: str, procs: list[Proc], timeout: float = 60.0) -> None:
    """First request that comes back 200: EPP connected and scraped, peers registered their workers."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive:
                raise RuntimeError(f"{p.name} exited: {p.log_tail(10)}")
        try:
            r = httpx.post(
                url + "/v1/completions", json={"model": MODEL, "prompt": "warm up", "max_tokens": 1}, timeout=10
            )
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise RuntimeError(f"router at {url} never answered 200: {last}")

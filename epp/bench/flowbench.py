"""`epp-bench flowcontrol`: does the EPP's flow-control layer pay? Live, through real Envoy, on epp-sim.

Three scenarios, each run on a fresh epp-sim fleet and a freshly started EPP + Envoy per config variant
(`CONFIGS`, one place, so thresholds can be tuned by name or overridden with `--config NAME=FILE`):

* **priority** — a `critical` flow (objective priority 100) alone at 35 % of capacity, then the same
  critical stream beside a `sheddable` flood (priority -1) so the offered load is 150 %. Legacy
  admission (epp-default; and the same utilization detector as flow control, without the gate)
  against flow control (utilization detector; and the EPP-local concurrency detector). Headline:
  critical TTFT p90 flooded / alone (goal <= 1.25).
* **fairness** — tenant B alone (11.8 % of capacity), then beside tenant A at 10x B's rate (130 % in
  all), same priority. Flow control with global-strict (no fairness), round-robin and program-aware
  fairness. Headlines: B's TTFT p90 beside A / alone (goal <= 1.5) and fleet output tokens/s against
  global-strict (goal >= 0.95).
* **queueing** — the `shared-prefix` and `sharegpt-like` workloads at 0.9 and 1.2 of capacity,
  epp-default against epp-default + flow control (the `epp-bench run` measurement, `live._run_point`).
* **queueing-bounded** — the same on servers with a capped batch (`--max-num-seqs 16`) and ~1,000
  requests per point: past capacity a backlog builds, in the servers' queues or, with flow control,
  in the EPP (late binding). Headline: TTFT p90 / p99 and throughput with flow control over without.

Capacity is the cost-model rate of epp/bench/capacity.py (ideal prefix reuse, decode batches of 16);
time runs `time_scale` wall seconds per simulated second so the busiest run of a scenario sends at
most `max_wall_rps` requests per wall second (live.py's rule). Reported latencies and rates are in
simulated seconds. Every run is bounded: arrivals stop after `duration` simulated seconds (at most
`max_per_flow` requests per flow) and the run ends `drain_s` wall seconds after the last arrival
(requests still open are cancelled and counted as `timeout`).

Note: flow control's `defaultRequestTTL` and the EPP's scrape interval are wall time; at time scale
`ts` a 60 s TTL is 60 / ts simulated seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from epp.bench.capacity import fleet_capacity
from epp.bench.configs import resolve_config
from epp.bench.live import LiveOptions, _error_kinds, _run_point, _wait_idle, time_scale_for, workload_at
from epp.bench.loadgen import Sample, run_open_loop
from epp.bench.peers import PeerUnavailable
from epp.bench.routers import RouterSpec, RunningRouter, start_router
from epp.bench.simfleet import SimFleet, start_fleet
from epp.bench.summary import percentile
from epp.bench.tenants import STATIC_OBJECTIVES, Flow, mix, reference_workload
from epp.bench.workloads import FleetSpec

GEN_TOKENS = "vllm:generation_tokens_total"

# ---------------------------------------------------------------------------------------------------------------
# Config variants: every EPP config the benchmark runs, by name.

# epp-default's plugins and profile (epp/scheduling/configs/epp-default.yaml), shared by every variant.
_BASE_PLUGINS = [
    {"type": "approx-prefix-cache-producer"},
    {"type": "estimated-ttft-scorer"},
    {"type": "max-score-picker"},
    {"type": "prefill-gate"},
]
_PROFILE = [{"name": "default", "plugins": [{"pluginRef": "estimated-ttft-scorer"}, {"pluginRef": "max-score-picker"}]}]


def epp_config(
    *,
    flow_control: bool,
    fairness: str | None = None,
    queue_depth_threshold: int = 1,
    kv_cache_util_threshold: float | None = None,
    ttl: str = "60s",
    detector: str = "utilization-detector",
    detector_parameters: dict | None = None,
    fairness_parameters: dict | None = None,
    flow_control_extra: dict | None = None,
    extra_plugins: list[dict] | None = None,
) -> str:
    """epp-default's scheduling plus a saturation detector, with or without flow control.

    Without `flow_control` the EPP uses legacy admission: sheddable requests get 429 while the pool is
    saturated (by this detector), everything else goes straight to a server queue. The detector is
    `utilization-detector` (queueDepthThreshold / kvCacheUtilThreshold from the arguments) unless
    `detector` names another (e.g. `concurrency-detector` with `detector_parameters`).
    """
    if detector == "utilization-detector":
        params: dict[str, Any] = {"queueDepthThreshold": queue_depth_threshold}
        if kv_cache_util_threshold is not None:
            params["kvCacheUtilThreshold"] = kv_cache_util_threshold
        params.update(detector_parameters or {})
    else:
        params = dict(detector_parameters or {})
    plugins = [*_BASE_PLUGINS, {"type": detector, **({"parameters": params} if params else {})}]
    doc: dict[str, Any] = {"apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "EndpointPickerConfig"}
    if flow_control:
        doc["featureGates"] = ["flowControl"]
    if flow_control and fairness:
        plugins.append({"type": fairness, **({"parameters": fairness_parameters} if fairness_parameters else {})})
    plugins.extend(extra_plugins or [])
    doc["plugins"] = plugins
    doc["schedulingProfiles"] = _PROFILE
    doc["saturationDetector"] = {"pluginRef": detector}
    if flow_control:
        fc: dict[str, Any] = {"defaultRequestTTL": ttl}
        if fairness:
            fc["defaultPriorityBand"] = {"fairnessPolicyRef": fairness}
        fc.update(flow_control_extra or {})
        doc["flowControl"] = fc
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)


# What flow control adds to the project's default config when it is on (epp/scheduling/configs).
DEFAULT_FLOW_CONTROL: dict[str, Any] = {
    "defaultRequestTTL": "60s",
    "maxRequests": 10000,
    "maxBytes": "1Gi",
    "defaultPriorityBand": {"fairnessPolicyRef": "round-robin-fairness-policy"},
}


def with_flow_control(text: str, on: bool) -> str:
    """A config with flow control switched on (the default section above, unless it has one) or off."""
    doc = yaml.safe_load(text)
    gates = [g for g in doc.get("featureGates", []) if g != "flowControl"]
    if on:
        doc["featureGates"] = [*gates, "flowControl"]
        doc.setdefault("flowControl", DEFAULT_FLOW_CONTROL)
    else:
        doc.pop("flowControl", None)
        if gates:
            doc["featureGates"] = gates
        else:
            doc.pop("featureGates", None)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)


def with_holdback(text: str, min_ceiling: float) -> str:
    doc = yaml.safe_load(text)
    doc["plugins"] = [p for p in doc["plugins"] if p["type"] != "priority-holdback-policy"] + [
        {"type": "priority-holdback-policy", "parameters": {"minCeiling": min_ceiling}}
    ]
    doc["flowControl"] = dict(doc["flowControl"], usageLimitPolicyPluginRef="priority-holdback-policy")
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)


def _named(name: str) -> str:
    return resolve_config(name).read_text()


CONFIGS: dict[str, str] = {
    # The EPP's built-in default: legacy admission with the detector's defaults (queue 5, KV 0.8).
    "epp-default": _named("epp-default"),
    # The default's scheduling with flow control off and on (whichever the built-in default is).
    "default-nofc": with_flow_control(_named("epp-default"), False),
    "default-fc": with_flow_control(_named("epp-default"), True),
    # default-nofc again, under another name: its ratios to default-nofc are the run-to-run spread.
    "nofc-repeat": with_flow_control(_named("epp-default"), False),
    # ...and sheddable (lower) bands stop at half the saturation the top band may use.
    "default-fc-hb50": with_holdback(with_flow_control(_named("epp-default"), True), 0.5),
    # Legacy admission with flow control's detector (queue depth 1): sheds as early, queues nothing in the EPP.
    "legacy-qd1": epp_config(flow_control=False),
    # Flow control as the reference documents it (round-robin fairness inside each priority band).
    "flowcontrol": epp_config(flow_control=True, fairness="round-robin-fairness-policy"),
    "fc-global-strict": epp_config(flow_control=True, fairness="global-strict-fairness-policy"),
    "fc-round-robin": epp_config(flow_control=True, fairness="round-robin-fairness-policy"),
    "fc-program-aware": epp_config(flow_control=True, fairness="program-aware-fairness"),
    # Flow control against the EPP's own in-flight count (no scrape lag; blind to a server's batch): at
    # most 16 requests per endpoint, the rest wait in the EPP where priority and fairness apply.
    "fc-concurrency": epp_config(
        flow_control=True,
        fairness="round-robin-fairness-policy",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 16},
    ),
    # Tighter per-endpoint concurrency (about the fleet's concurrency at capacity for these requests).
    "fc-conc8": epp_config(
        flow_control=True,
        fairness="round-robin-fairness-policy",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 8},
    ),
    # ...and lower bands stop earlier (priority-holdback): headroom only higher priorities may use.
    "fc-conc8-hb50": epp_config(
        flow_control=True,
        fairness="round-robin-fairness-policy",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 8},
        flow_control_extra={"usageLimitPolicyPluginRef": "priority-holdback-policy"},
        extra_plugins=[{"type": "priority-holdback-policy", "parameters": {"minCeiling": 0.5}}],
    ),
    "fc-conc8-hb75": epp_config(
        flow_control=True,
        fairness="round-robin-fairness-policy",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 8},
        flow_control_extra={"usageLimitPolicyPluginRef": "priority-holdback-policy"},
        extra_plugins=[{"type": "priority-holdback-policy", "parameters": {"minCeiling": 0.75}}],
    ),
    # Fairness on the same detector: none, round-robin turns, least attained service in tokens.
    "fc-conc8-strict": epp_config(
        flow_control=True,
        fairness="global-strict-fairness-policy",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 8},
    ),
    "fc-conc8-las": epp_config(
        flow_control=True,
        fairness="program-aware-fairness",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 8},
    ),
    "fc-conc8-hb25": epp_config(
        flow_control=True,
        fairness="round-robin-fairness-policy",
        detector="concurrency-detector",
        detector_parameters={"maxConcurrency": 8},
        flow_control_extra={"usageLimitPolicyPluginRef": "priority-holdback-policy"},
        extra_plugins=[{"type": "priority-holdback-policy", "parameters": {"minCeiling": 0.25}}],
    ),
}

# ---------------------------------------------------------------------------------------------------------------
# Scenarios.


@dataclass(frozen=True)
class Run:
    label: str  # "alone" | "flooded" | "mixed"
    flows: tuple[Flow, ...]


@dataclass(frozen=True)
class FlowScenario:
    name: str
    variants: tuple[str, ...]
    runs: tuple[Run, ...]
    focus: str  # the flow whose TTFT the headline compares across runs


CRITICAL = Flow("critical", 0.35, objective="critical")
SHEDDABLE = Flow("sheddable", 1.15, objective="sheddable")
TENANT_B = Flow("tenant-b", 1.3 / 11, fairness_id="tenant-b")
TENANT_A = Flow("tenant-a", 1.3 * 10 / 11, fairness_id="tenant-a")

PRIORITY = FlowScenario(
    "priority",
    ("default-nofc", "default-fc", "fc-concurrency", "fc-conc8", "fc-conc8-hb50", "fc-conc8-hb75"),
    (Run("alone", (CRITICAL,)), Run("flooded", (CRITICAL, SHEDDABLE))),
    focus="critical",
)
FAIRNESS = FlowScenario(
    "fairness",
    ("fc-conc8-strict", "fc-conc8", "fc-conc8-las"),
    (Run("alone", (TENANT_B,)), Run("mixed", (TENANT_A, TENANT_B))),
    focus="tenant-b",
)
FAIRNESS_BASELINE = "fc-conc8-strict"  # "no fairness": fleet throughput is compared against it


@dataclass(frozen=True)
class QueueingScenario:
    name: str = "queueing"
    variants: tuple[str, ...] = ("default-nofc", "default-fc", "nofc-repeat")
    workloads: tuple[str, ...] = ("shared-prefix", "sharegpt-like")
    loads: tuple[float, ...] = (0.9, 1.2)
    # More requests than `epp-bench run`'s 120 so 1.2 x capacity is overload for several seconds.
    workload_params: dict[str, dict] = field(
        default_factory=lambda: {"shared-prefix": {"prompts_per_group": 15}, "sharegpt-like": {"n": 360}}
    )
    server_args: tuple[str, ...] = ()  # extra epp-sim flags for this scenario's fleets


QUEUEING = QueueingScenario()
# The same comparison where a server queue exists: vLLM-like servers whose running batch is capped
# (`--max-num-seqs 16`, about the batch the capacity arithmetic assumes), and ~1,000 requests per
# point so 1.2 x capacity stays overloaded long enough for a backlog to build. Without flow control
# the backlog waits in the servers' first-come-first-served queues, bound to the server picked at
# arrival; with it, past the detector's threshold the rest waits in the EPP and goes to whichever
# server has room first (late binding).
QUEUEING_BOUNDED = QueueingScenario(
    name="queueing-bounded",
    workload_params={"shared-prefix": {"prompts_per_group": 42}, "sharegpt-like": {"n": 1000}},
    server_args=("--max-num-seqs", "16"),
)
SCENARIOS = ("priority", "fairness", "queueing", "queueing-bounded")


@dataclass
class FlowBenchOptions:
    duration: float = 8.0  # simulated seconds of arrivals per run (priority, fairness)
    max_per_flow: int = 1500  # request bound per flow and run
    replicas: int = 8
    max_wall_rps: float = 40.0
    drain_s: float = 45.0
    quick: bool = False
    configs: dict[str, str] = field(default_factory=lambda: dict(CONFIGS))
    variants: tuple[str, ...] | None = None  # override every scenario's variant list
    # Extra epp-sim flags for every fleet (e.g. `--max-num-seqs 16`: servers whose batch is bounded,
    # so past capacity requests wait in a server queue unless the EPP holds them).
    server_args: tuple[str, ...] = ()


def quick_scenarios() -> dict[str, Any]:
    """The smoke variant: two configs per scenario, one queueing workload and load."""
    return {
        "priority": replace(PRIORITY, variants=("default-nofc", "fc-conc8-hb50")),
        "fairness": replace(FAIRNESS, variants=("fc-conc8-strict", "fc-conc8")),
        "queueing": QueueingScenario(
            variants=("default-nofc", "default-fc"),
            workloads=("sharegpt-like",),
            loads=(1.2,),
            workload_params={"sharegpt-like": {"n": 120}},
        ),
        "queueing-bounded": replace(
            QUEUEING_BOUNDED, workloads=("sharegpt-like",), loads=(1.2,), workload_params={"sharegpt-like": {"n": 240}}
        ),
    }


def full_scenarios() -> dict[str, Any]:
    return {"priority": PRIORITY, "fairness": FAIRNESS, "queueing": QUEUEING, "queueing-bounded": QUEUEING_BOUNDED}


QUICK_DURATION = 2.0

# ---------------------------------------------------------------------------------------------------------------
# Measurement.


def flowcontrol_fingerprint() -> str:
    """Hash of the code that admits, queues and dispatches requests (what these results depend on)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in ("flowcontrol", "requestcontrol", "scheduling/config.py"):
        p = root / rel
        files = sorted(f for f in p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _kind(s: Sample) -> str:
    if s.ok:
        return "ok"
    if s.status in (429, 503):
        return f"http_{s.status}"
    return "other"


def flow_stats(samples: list[Sample], ts: float, window: float) -> dict[str, Any]:
    """One flow's outcome; times in simulated seconds, rates over the run's `window` (simulated s)."""
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft / ts for s in ok if s.ttft is not None]
    e2e = [s.e2e / ts for s in ok if s.e2e is not None]
    tokens = sum(s.output_tokens for s in ok)
    other = _error_kinds([s for s in samples if _kind(s) == "other"])

    def r(x: float | None, nd: int = 4) -> float | None:
        return None if x is None else round(x, nd)

    return {
        "sent": len(samples),
        "ok": len(ok),
        "http_429": sum(1 for s in samples if s.status == 429 and not s.ok),
        "http_503": sum(1 for s in samples if s.status == 503 and not s.ok),
        "other_errors": sum(other.values()),
        "errors": other,
        "ttft_p50": r(percentile(ttft, 50)),
        "ttft_p90": r(percentile(ttft, 90)),
        "ttft_p99": r(percentile(ttft, 99)),
        "e2e_p90": r(percentile(e2e, 90)),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / window, 1) if window > 0 else 0.0,
        "completed_per_s": round(len(ok) / window, 2) if window > 0 else 0.0,
    }


_FC_PREFIXES = ("inference_extension_flow_control_", "epp_flow_control_")  # the llm_d_epp_ copies are skipped
_FC_LABELS = ("outcome", "priority", "fairness_id")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _metric_sums(text: str) -> dict[str, float]:
    """The EPP's flow-control counters and histogram sums/counts, summed over every label except
    outcome / priority / fairness id (gauges, buckets and `_created` skipped: a run's change is what counts)."""
    gauges = set()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) == 4 and parts[3] == "gauge":
                gauges.add(parts[2])
            continue
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        prefix = next((p for p in _FC_PREFIXES if name.startswith(p)), None)
        if prefix is None or name in gauges or name.endswith(("_bucket", "_created")):
            continue
        kept = [f"{k}={v}" for k, v in _LABEL.findall(labels) if k in _FC_LABELS and v]
        key = name[len(prefix) :] + ("{" + ",".join(kept) + "}" if kept else "")
        with contextlib.suppress(ValueError):
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _epp_metrics(router: RunningRouter) -> dict[str, float]:
    if not router.metrics_url:
        return {}
    try:
        return _metric_sums(httpx.get(router.metrics_url, timeout=10).text)
    except httpx.HTTPError:
        return {}


async def _drive(
    url: str,
    fm_requests,
    arrivals_wall: list[float],
    deadline: float,
    fleet: SimFleet,
    progress: Callable[[int, int], None],
) -> tuple[list[Sample], dict[str, float]]:
    """The open-loop run plus the fleet's generated-token counter at the first and last arrival."""
    marks: dict[str, float] = {}

    async def sampler() -> None:
        t0 = time.perf_counter()
        for key, at in (("first", arrivals_wall[0]), ("last", arrivals_wall[-1])):
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.perf_counter() - t0
            try:
                counters = await asyncio.to_thread(fleet.counters)
            except httpx.HTTPError:
                return  # no reading: the run reports no generated-token rate
            marks[f"{key}_t"] = (t + time.perf_counter() - t0) / 2
            marks[f"{key}_tokens"] = counters[GEN_TOKENS]

    samples, _ = await asyncio.gather(run_open_loop(url, fm_requests, arrivals_wall, deadline, progress), sampler())
    return samples, marks


def run_flow_mix(
    run: Run,
    scenario: str,
    variant: str,
    router: RunningRouter,
    fleet: SimFleet,
    cap: float,
    ts: float,
    seed: int,
    opts: FlowBenchOptions,
    log: Callable[[str], None],
) -> dict[str, Any]:
    fm = mix(run.flows, cap, opts.duration, seed, text_seed=f"{scenario}/{run.label}", max_per_flow=opts.max_per_flow)
    if not fm.requests:
        raise ValueError(f"{scenario}/{run.label}: no arrivals in {opts.duration} simulated s (raise --duration)")
    arrivals = [a * ts for a in fm.arrivals]
    deadline = arrivals[-1] + opts.drain_s
    epp_before = _epp_metrics(router)
    t0 = time.perf_counter()
    marks = {len(fm.requests) * q // 4 for q in (1, 2, 3)}

    def progress(done: int, total: int) -> None:
        if done in marks:
            log(f"      {variant} {run.label}: {done}/{total} done ({time.perf_counter() - t0:.0f}s)")

    samples, tok = asyncio.run(_drive(router.url, fm.requests, arrivals, deadline, fleet, progress))
    wall = time.perf_counter() - t0
    _wait_idle(fleet)
    epp_after = _epp_metrics(router)
    # The run's window: first arrival to last completion (simulated s), the same for every flow.
    ends = [s.start + s.e2e for s in samples if s.ok and s.e2e is not None]
    window = ((max(ends) if ends else arrivals[-1]) - arrivals[0]) / ts
    flows = {}
    for f in run.flows:
        flows[f.name] = flow_stats([s for s, name in zip(samples, fm.flows, strict=True) if name == f.name], ts, window)
    span = (tok.get("last_t", 0.0) - tok.get("first_t", 0.0)) / ts
    fleet_tok_s = round((tok["last_tokens"] - tok["first_tokens"]) / span, 1) if span > 0 else None
    row = {
        "scenario": scenario,
        "variant": variant,
        "run": run.label,
        "seed": seed,
        "time_scale": ts,
        "capacity": round(cap, 2),
        "offered_load": round(sum(f.load for f in run.flows), 4),
        "duration": opts.duration,
        "requests": len(samples),
        "wall_s": round(wall, 1),
        "window_s": round(window, 3),
        # Fleet throughput: output tokens of every successful request over the window (first arrival to
        # last completion), summary.py's definition; when all requests finish, total work / makespan.
        "fleet_output_tokens_per_s": None,
        # The simulators' generated-token counter between the first and the last arrival (every stream,
        # finished or not): what the fleet decoded while the load was on (prefill-heavy steps lower it).
        "generated_tokens_per_s_while_loaded": fleet_tok_s,
        "flows": flows,
        "total": flow_stats(samples, ts, window),
        "epp_flow_control_metrics": {k: round(epp_after[k] - epp_before.get(k, 0.0), 4) for k in sorted(epp_after)},
    }
    row["fleet_output_tokens_per_s"] = row["total"]["output_tokens_per_s"]
    parts = []
    for name, st in flows.items():
        parts.append(
            f"{name}: ok {st['ok']}/{st['sent']} 429 {st['http_429']} 503 {st['http_503']} "
            f"other {st['other_errors']} ttft p50/p90 {st['ttft_p50']}/{st['ttft_p90']}s"
        )
    log(
        f"    {scenario} {variant:17s} {run.label:8s} load {row['offered_load']:.2f}  "
        + "; ".join(parts)
        + f"  fleet tok/s {row['fleet_output_tokens_per_s']}  ({row['wall_s']}s)"
    )
    return row


def _start(variant: str, text: str, fleet: SimFleet, workdir: Path) -> RunningRouter:
    path = workdir / f"config-{variant}.yaml"
    path.write_text(text)
    spec = RouterSpec(f"epp[{variant}]", "epp", config=path, epp_args=("--static-objectives", STATIC_OBJECTIVES))
    try:
        return start_router(spec, fleet, workdir)
    except RuntimeError as exc:
        # The EPP's own one-line reason (a config it rejects) is in its log.
        logs = sorted(workdir.glob("epp-*.log"), key=lambda p: p.stat().st_mtime)
        tail = ""
        if logs:
            lines = [ln for ln in logs[-1].read_text(errors="replace").splitlines() if ln.strip()]
            tail = lines[-1] if lines else ""
        raise RuntimeError(f"{exc}; {tail}"[:400]) from None


def scenario_time_scale(sc: FlowScenario, cap: float, opts: FlowBenchOptions) -> float:
    top = max(sum(f.load for f in r.flows) for r in sc.runs) * cap
    return time_scale_for(top, LiveOptions(loads=[1.0], max_wall_rps=opts.max_wall_rps))


def run_flow_scenario(
    sc: FlowScenario,
    seed: int,
    opts: FlowBenchOptions,
    workdir: Path,
    on_row: Callable[[dict], None],
    skipped: dict[str, str],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    cap = fleet_capacity(reference_workload(seed * 1000, opts.replicas))
    ts = scenario_time_scale(sc, cap, opts)
    variants = opts.variants or sc.variants
    log(
        f"  {sc.name} (seed {seed}): capacity {cap:.1f} req/s (cost model), time scale {ts}, "
        f"{opts.duration:g} simulated s per run, variants {', '.join(variants)}"
    )
    for variant in variants:
        key = f"{sc.name}/{variant}"
        if variant not in opts.configs:
            skipped[key] = f"unknown config variant {variant!r} (known: {', '.join(opts.configs)})"
            log(f"    {variant}: skipped: {skipped[key]}")
            continue
        fleet = start_fleet(FleetSpec(opts.replicas, extra=opts.server_args), ts, workdir)
        try:
            try:
                router = _start(variant, opts.configs[variant], fleet, workdir)
            except (RuntimeError, PeerUnavailable, TimeoutError) as exc:
                skipped[key] = f"did not start: {exc}"[:400]
                log(f"    {variant}: skipped: {exc}")
                continue
            try:
                for run in sc.runs:
                    on_row(run_flow_mix(run, sc.name, variant, router, fleet, cap, ts, seed, opts, log))
            finally:
                router.stop()
        finally:
            fleet.stop()
    return {"capacity": round(cap, 2), "time_scale": ts}


def run_queueing(
    sc: QueueingScenario,
    seed: int,
    opts: FlowBenchOptions,
    workdir: Path,
    on_row: Callable[[dict], None],
    skipped: dict[str, str],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    lopts = LiveOptions(
        loads=list(sc.loads),
        seed=seed,
        replicas=opts.replicas,
        max_wall_rps=opts.max_wall_rps,
        drain_s=opts.drain_s,
        workload_params=sc.workload_params,
    )
    info: dict[str, Any] = {}
    variants = opts.variants or sc.variants
    for wname in sc.workloads:
        base = workload_at(wname, seed * 1000, lopts)
        cap = fleet_capacity(base)
        ts = time_scale_for(max(sc.loads) * cap, lopts)
        info[wname] = {"capacity": round(cap, 2), "time_scale": ts, "requests_per_point": len(base.requests)}
        log(
            f"  {sc.name} {wname} (seed {seed}): {len(base.requests)} requests per point, capacity {cap:.1f} req/s, "
            f"time scale {ts}"
        )
        for variant in variants:
            key = f"{sc.name}/{variant}"
            if variant not in opts.configs:
                skipped[key] = f"unknown config variant {variant!r}"
                continue
            extra = base.fleet.extra + sc.server_args + opts.server_args
            fleet = start_fleet(replace(base.fleet, extra=extra), ts, workdir)
            try:
                try:
                    router = _start(variant, opts.configs[variant], fleet, workdir)
                except (RuntimeError, PeerUnavailable, TimeoutError) as exc:
                    skipped[key] = f"did not start: {exc}"[:400]
                    log(f"    {variant}: skipped: {exc}")
                    continue
                try:
                    for k, frac in enumerate(sc.loads):
                        before = _epp_metrics(router)
                        row = _run_point(wname, router.spec, router.url, fleet, k, frac, cap, ts, lopts, log)
                        after = _epp_metrics(router)
                        row.update(
                            scenario=sc.name,
                            variant=variant,
                            seed=seed,
                            point_seed=row["seed"],
                            capacity=round(cap, 2),
                            epp_flow_control_metrics={
                                m: round(after[m] - before.get(m, 0.0), 4) for m in sorted(after)
                            },
                        )
                        on_row(row)
                finally:
                    router.stop()
            finally:
                fleet.stop()
    return info


def plan(scenarios: dict[str, Any], names: list[str], seeds: list[int], opts: FlowBenchOptions) -> tuple[int, float]:
    """(requests, estimated wall seconds) of a benchmark, from the same arithmetic the runs use."""
    setup_s = 8.0  # fleet + EPP + Envoy start and the first routable request, measured on this machine
    reqs, wall = 0, 0.0
    for seed in seeds:
        for name in names:
            sc = scenarios[name]
            variants = opts.variants or sc.variants
            if isinstance(sc, FlowScenario):
                cap = fleet_capacity(reference_workload(seed * 1000, opts.replicas))
                ts = scenario_time_scale(sc, cap, opts)
                for _ in variants:
                    wall += setup_s
                    for run in sc.runs:
                        load = sum(f.load for f in run.flows)
                        reqs += sum(min(opts.max_per_flow, int(f.load * cap * opts.duration)) for f in run.flows)
                        # Arrivals, then the backlog an overload leaves (served at capacity), then idle checks.
                        wall += opts.duration * ts * (1 + max(0.0, load - 1.0)) + 2.0
            else:
                lopts = LiveOptions(
                    loads=list(sc.loads),
                    seed=seed,
                    replicas=opts.replicas,
                    max_wall_rps=opts.max_wall_rps,
                    workload_params=sc.workload_params,
                )
                for wname in sc.workloads:
                    base = workload_at(wname, seed * 1000, lopts)
                    cap = fleet_capacity(base)
                    ts = time_scale_for(max(sc.loads) * cap, lopts)
                    n = len(base.requests)
                    for _ in variants:
                        wall += setup_s
                        for frac in sc.loads:
                            reqs += n
                            dur = n / (frac * cap)
                            wall += dur * ts * (1 + max(0.0, frac - 1.0)) + 2.0
    return reqs, wall


def run_benchmark(
    names: list[str],
    seeds: list[int],
    opts: FlowBenchOptions,
    on_row: Callable[[dict], None],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the named scenarios for every seed; returns meta (capacities, time scales, skipped, costs)."""
    scenarios = quick_scenarios() if opts.quick else full_scenarios()
    workdir = Path(tempfile.mkdtemp(prefix="epp-flowbench-"))
    skipped: dict[str, str] = {}
    info: dict[str, Any] = {}
    costs: dict[str, float] = {}
    for seed in seeds:
        for name in names:
            t0 = time.monotonic()
            log(f"[{name}] seed {seed}")
            sc = scenarios[name]
            if isinstance(sc, FlowScenario):
                info[f"{name}/{seed}"] = run_flow_scenario(sc, seed, opts, workdir, on_row, skipped, log)
            else:
                info[f"{name}/{seed}"] = run_queueing(sc, seed, opts, workdir, on_row, skipped, log)
            costs[f"{name}/{seed}"] = round(time.monotonic() - t0, 1)
            log(f"[{name}] seed {seed}: {costs[f'{name}/{seed}']:.0f} s wall")
    return {"scenario_info": info, "skipped": skipped, "scenario_wall_s": costs, "workdir": str(workdir)}


def describe_scenarios(scenarios: dict[str, Any], names: list[str], opts: FlowBenchOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        sc = scenarios[name]
        variants = list(opts.variants or sc.variants)
        if isinstance(sc, FlowScenario):
            out[name] = {
                "variants": variants,
                "focus": sc.focus,
                "runs": [{"label": r.label, "flows": [f.describe() for f in r.flows]} for r in sc.runs],
            }
        else:
            out[name] = {
                "variants": variants,
                "workloads": list(sc.workloads),
                "loads": list(sc.loads),
                "workload_params": sc.workload_params,
                "server_args": [*sc.server_args, *opts.server_args],
            }
    return out


# ---------------------------------------------------------------------------------------------------------------
# `epp-bench flowcontrol` (argument parsing lives in epp/bench/cli.py).

HOW = (
    "How measured: one epp-sim process per config variant (8 identical vLLM-like replicas, the cost model of "
    "epp/sim/costmodel.py), this project's EPP (`--static-objectives`, the variant's config, TLS ext_proc, 50 ms "
    "scrapes) behind real Envoy (deploy/envoy/original-dst.yaml, FULL_DUPLEX_STREAMED), an open-loop aiohttp "
    "client streaming every request (Poisson arrivals per flow, headers `x-gateway-inference-objective` / "
    "`x-gateway-inference-fairness-id`), all on 127.0.0.1. Capacity is epp/bench/capacity.py's cost-model rate for "
    "the flows' request shape (sharegpt-like lengths: prompts ~600 tokens, outputs ~32, no shared text) or the "
    "queueing workload; loads are fractions of it. Simulated time runs `time scale` wall seconds per simulated "
    "second (the busiest run of a scenario sends at most 40 requests per wall second); every latency and rate is "
    "in simulated seconds. TTFT is the first content chunk, over successful requests only. A flow's `out tok/s` is "
    "its successful requests' output tokens over the run's window (first arrival to last completion); "
    "`fleet tok/s` is the same over all flows (when every request finishes: total work / makespan); `gen tok/s "
    "loaded` is the simulators' own generated-token counter between the first and the last arrival (every "
    "stream, finished or not). 429 / 503 are the gateway's answers "
    "(shed / timed out in the EPP's queue); `other` are every other failure (`timeout` = still open "
    "`drain_s` wall seconds after the last arrival, cancelled). The same flow has the same arrival times and "
    "lengths in every run and variant of a seed; the prompt text differs per run so no run inherits another's "
    "prefix cache. Flow control's TTL is wall time (60 s = 60 / time scale simulated s)."
)


def versions() -> dict[str, str]:
    """What ran: the EPP package, Envoy, the client library and the plotting library."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    from epp.stack.processes import bin_path

    out = {}
    for pkg in ("epp", "aiohttp", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = ""
    try:
        text = subprocess.run([bin_path("envoy"), "--version"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"version: \S+?/([0-9][^/\s]*)/", text)
        out["envoy"] = m.group(1) if m else text.strip()[:80]
    except (OSError, subprocess.SubprocessError, FileNotFoundError):
        out["envoy"] = ""
    return out


def _parse_config_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"epp-bench: --config expects NAME=FILE, got {item!r}")
        out[name] = resolve_config(path).read_text()
    return out


def main(args: Any, meta: Callable[[dict], dict], results_dir: Path) -> None:
    from epp.bench.fingerprint import scheduler_fingerprint
    from epp.bench.flowreport import write_outputs
    from epp.bench.results import ResultFile, load

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    stem = "flowcontrol" + ("-quick" if args.quick else "") + ("" if args.scenario == "all" else f"-{args.scenario}")
    out: Path = args.out or results_dir / f"{stem}.json"
    if args.render_only:
        for p in write_outputs(load(out), out):
            print(f"wrote {p}")
        return
    configs = dict(CONFIGS)
    configs.update(_parse_config_overrides(args.config))
    if args.print_configs:
        for name, text in configs.items():
            print(f"# --- {name}\n{text}")
        return
    opts = FlowBenchOptions(
        duration=args.duration or (QUICK_DURATION if args.quick else FlowBenchOptions.duration),
        replicas=args.replicas,
        max_wall_rps=args.max_wall_rps,
        drain_s=args.drain_s,
        quick=args.quick,
        configs=configs,
        variants=tuple(v.strip() for v in args.variants.split(",")) if args.variants else None,
        server_args=tuple(args.server_args.split()),
    )
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scenarios = quick_scenarios() if args.quick else full_scenarios()
    n_req, est = plan(scenarios, names, seeds, opts)
    print(
        f"epp-bench flowcontrol: scenarios {', '.join(names)}, seeds {seeds}, {opts.duration:g} simulated s per "
        f"flow run; about {n_req} requests, estimated {est / 60:.1f} min wall"
    )
    if args.plan_only:
        return
    described = describe_scenarios(scenarios, names, opts)
    used = {v for d in described.values() for v in d["variants"]}
    rf = ResultFile(
        out,
        meta(
            {
                "mode": "live-flowcontrol",
                "quick": args.quick,
                "scenarios": described,
                "seeds": seeds,
                "duration": opts.duration,
                "max_per_flow": opts.max_per_flow,
                "replicas": opts.replicas,
                "max_wall_rps": opts.max_wall_rps,
                "drain_s": opts.drain_s,
                "server_args": list(opts.server_args),
                "static_objectives": STATIC_OBJECTIVES,
                "fairness_baseline": FAIRNESS_BASELINE,
                "configs": {k: v for k, v in configs.items() if k in used},
                "scheduler_fingerprint": scheduler_fingerprint(),
                "flowcontrol_fingerprint": flowcontrol_fingerprint(),
                "versions": versions(),
                "planned_wall_s": round(est),
                "how": HOW,
            }
        ),
    )
    t0 = time.monotonic()
    rf.meta.update(run_benchmark(names, seeds, opts, rf.add))
    rf.meta["wall_s"] = round(time.monotonic() - t0)
    rf.meta["requests"] = sum(r.get("requests", 0) for r in rf.rows)
    rf.save()
    written = write_outputs({"meta": rf.meta, "rows": rf.rows}, out)
    print()
    print(_console_summary({"meta": rf.meta, "rows": rf.rows}))
    print(f"wrote {out}, " + ", ".join(str(p) for p in written))
    print(f"cost: {rf.meta['requests']} requests, {rf.meta['wall_s']} s wall (planned {round(est)} s)")


def _console_summary(data: dict) -> str:
    """The Markdown's headline tables, for the terminal."""
    from epp.bench.flowreport import render

    lines = render(data).splitlines()
    keep, on = [], False
    for ln in lines:
        if ln.startswith("## "):
            on = ln.startswith(("## Priority", "## Fairness", "## Queueing", "## Skipped"))
        if on and (ln.startswith(("## ", "|")) or not ln.strip()):
            keep.append(ln)
    text = "\n".join(keep)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text

"""Request flows for the flow-control benchmark: who sends what, how fast, under which objective.

A `Flow` is one stream of requests sharing an InferenceObjective (`x-gateway-inference-objective`,
whose priority the EPP takes from `--static-objectives`) and/or a fairness id
(`x-gateway-inference-fairness-id`, the tenant). Its rate is a fraction of the fleet's capacity
(epp/bench/capacity.py), so scenarios read as "critical at 35 % of capacity".

Every flow is a pure function of (seed, flow name): the same arrival times and the same prompt and
output lengths whether it runs alone or beside a flood, so "critical alone" and "critical flooded"
compare the same requests. Only the prompt *text* changes with `text_seed` (one per run), so the
prefix cache left by one run cannot make the next one look faster. Lengths follow `sharegpt-like`
(log-normal prompts around 600 tokens, outputs around 32), with no text shared between requests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from epp.bench.workloads import BenchRequest, FleetSpec, Words, Workload

OBJECTIVE_HEADER = "x-gateway-inference-objective"
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
# What the benchmark's EPPs are started with: `--static-objectives critical=100,sheddable=-1`.
STATIC_OBJECTIVES = "critical=100,sheddable=-1"


@dataclass(frozen=True)
class Flow:
    name: str  # label in results
    load: float  # offered rate as a fraction of fleet capacity
    objective: str = ""  # x-gateway-inference-objective ("" = none: priority 0)
    fairness_id: str = ""  # x-gateway-inference-fairness-id ("" = none: the EPP's "default-flow")
    mean_prompt: int = 600
    mean_output: int = 32

    def headers(self) -> tuple[tuple[str, str], ...]:
        h = []
        if self.objective:
            h.append((OBJECTIVE_HEADER, self.objective))
        if self.fairness_id:
            h.append((FAIRNESS_HEADER, self.fairness_id))
        return tuple(h)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "load": round(self.load, 4),
            "objective": self.objective,
            "fairness_id": self.fairness_id,
            "mean_prompt": self.mean_prompt,
            "mean_output": self.mean_output,
        }


def _lengths(rng: random.Random, mean_prompt: int, mean_output: int) -> tuple[int, int]:
    # The sharegpt-like workload's distribution (epp/bench/workloads.py).
    p = int(min(4000, max(8, rng.lognormvariate(0, 0.8) * mean_prompt * 0.73)))
    o = int(min(128, max(4, rng.lognormvariate(0, 0.6) * mean_output * 0.84)))
    return p, o


def flow_requests(flow: Flow, n: int, seed: int, text_seed: str = "") -> list[BenchRequest]:
    """The first `n` requests of the flow: lengths fixed by (seed, name), text by `text_seed` too."""
    lengths = random.Random(f"flow-lengths/{seed}/{flow.name}")
    words = Words(random.Random(f"flow-text/{seed}/{flow.name}/{text_seed}"))
    headers = flow.headers()
    out = []
    for i in range(n):
        p, o = _lengths(lengths, flow.mean_prompt, flow.mean_output)
        out.append(BenchRequest("completions", o, prompt=words.text(p), group=i, headers=headers))
    return out


def flow_arrivals(rate: float, duration: float, seed: int, name: str, max_requests: int) -> list[float]:
    """Poisson arrival times (simulated seconds) in [0, duration), at most `max_requests`."""
    rng = random.Random(f"flow-arrivals/{seed}/{name}/{rate}")
    t, out = rng.expovariate(rate) if rate > 0 else duration, []
    while t < duration and len(out) < max_requests:
        out.append(t)
        t += rng.expovariate(rate)
    return out


@dataclass
class FlowMix:
    """Several flows interleaved by arrival time; `flows[i]` names the flow of request i."""

    requests: list[BenchRequest]
    arrivals: list[float]  # simulated seconds, ascending
    flows: list[str]


def mix(
    flows: tuple[Flow, ...], capacity: float, duration: float, seed: int, text_seed: str = "", max_per_flow: int = 2000
) -> FlowMix:
    """All flows for `duration` simulated seconds, each at most `max_per_flow` requests (a flow's
    stream does not depend on which other flows run beside it)."""
    items: list[tuple[float, str, BenchRequest]] = []
    for f in flows:
        arr = flow_arrivals(f.load * capacity, duration, seed, f.name, max_per_flow)
        reqs = flow_requests(f, len(arr), seed, text_seed)
        items += [(a, f.name, r) for a, r in zip(arr, reqs, strict=True)]
    items.sort(key=lambda x: x[0])
    return FlowMix([r for _, _, r in items], [a for a, _, _ in items], [n for _, n, _ in items])


def reference_workload(
    seed: int, replicas: int = 8, n: int = 600, mean_prompt: int = 600, mean_output: int = 32
) -> Workload:
    """A sample of the flows' request shape: what fleet_capacity() is computed from."""
    shape = Flow("capacity-sample", 1.0, mean_prompt=mean_prompt, mean_output=mean_output)
    return Workload(
        "tenant-chat",
        flow_requests(shape, n, seed),
        FleetSpec(replicas),
        dict(n=n, mean_prompt=mean_prompt, mean_output=mean_output),
    )

"""Seeded workload definitions shared by the live harness and the virtual-time mode.

A workload is a list of requests (OpenAI bodies) plus the fleet it needs. Prompt text is made
of short pseudo-words so that one word is one token for epp-sim's tokenizer: lengths given in
tokens here are what the simulated engines see (plus BOS / chat template tokens).
Every generator is a pure function of its parameters and seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request body; `model` is the base model or a LoRA adapter name."""

    api: str  # "completions" | "chat"
    max_tokens: int
    model: str = MODEL
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content)
    group: int = -1  # shared-prefix group / session (for analysis only)
    # Extra HTTP request headers, e.g. x-gateway-inference-objective / -fairness-id (flow control).
    headers: tuple[tuple[str, str], ...] = ()

    def body(self, prompt_ids: list[int] | None = None) -> dict[str, Any]:
        """The JSON body; `prompt_ids` sends the completion prompt as token ids instead of text."""
        b: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
        if self.api == "chat":
            b["messages"] = [{"role": r, "content": c} for r, c in self.messages or ()]
        else:
            b["prompt"] = prompt_ids if prompt_ids is not None else self.prompt
        return b

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.api == "chat" else "/v1/completions"


@dataclass(frozen=True)
class FleetSpec:
    """epp-sim flags a workload needs (identical replicas unless per-replica adapters are given)."""

    replicas: int = 8
    num_gpu_blocks: int = 4096  # 65k tokens per replica: a few long prefixes, not all of them
    lora_modules: tuple[str, ...] = ()
    max_loras: int = 1
    extra: tuple[str, ...] = ()
    kv_events: bool = False  # publish vLLM KV events (and answer replays) for the precise index

    def sim_args(self) -> list[str]:
        args = ["--replicas", str(self.replicas), "--num-gpu-blocks", str(self.num_gpu_blocks)]
        if self.lora_modules:
            args += ["--lora-modules", ",".join(self.lora_modules), "--max-loras", str(self.max_loras)]
        return args + list(self.extra)


@dataclass
class Workload:
    name: str
    requests: list[BenchRequest]
    fleet: FleetSpec
    # Arrival gaps are Poisson except for sessions, whose next turn must come after the previous one.
    params: dict[str, Any] = field(default_factory=dict)


class Words:
    """Deterministic pseudo-words of 3-7 letters: one token each for epp-sim's tokenizer."""

    def __init__(self, rng: random.Random, vocab: int = 4000) -> None:
        self.rng = rng
        self.vocab = ["".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 7))) for _ in range(vocab)]

    def text(self, n: int) -> str:
        return " ".join(self.rng.choices(self.vocab, k=n))


def shared_prefix(
    seed: int,
    groups: int = 24,
    prompts_per_group: int = 5,
    system_len: int = 4000,
    question_len: int = 800,
    output_len: int = 16,
    replicas: int = 8,
    num_gpu_blocks: int = 4096,
) -> Workload:
    """The peers' canonical shape (llm-d / inference-perf `shared_prefix`), scaled to this machine."""
    rng = random.Random(f"shared-prefix/{seed}")
    w = Words(rng)
    systems = [w.text(system_len) for _ in range(groups)]
    reqs = [
        BenchRequest("completions", output_len, prompt=systems[g] + "\n\n" + w.text(question_len), group=g)
        for g in range(groups)
        for _ in range(prompts_per_group)
    ]
    rng.shuffle(reqs)
    return Workload(
        "shared-prefix",
        reqs,
        FleetSpec(replicas, num_gpu_blocks),
        dict(
            groups=groups,
            prompts_per_group=prompts_per_group,
            system_len=system_len,
            question_len=question_len,
            output_len=output_len,
        ),
    )


def sharegpt_like(
    seed: int,
    n: int = 120,
    mean_prompt: int = 600,
    mean_output: int = 32,
    replicas: int = 8,
    num_gpu_blocks: int = 4096,
) -> Workload:
    """Varied lengths (log-normal, as in ShareGPT), no shared text beyond BOS."""
    rng = random.Random(f"sharegpt-like/{seed}")
    w = Words(rng)
    reqs = []
    for i in range(n):
        p = int(min(4000, max(8, rng.lognormvariate(0, 0.8) * mean_prompt * 0.73)))
        o = int(min(128, max(4, rng.lognormvariate(0, 0.6) * mean_output * 0.84)))
        reqs.append(BenchRequest("completions", o, prompt=w.text(p), group=i))
    return Workload(
        "sharegpt-like",
        reqs,
        FleetSpec(replicas, num_gpu_blocks),
        dict(n=n, mean_prompt=mean_prompt, mean_output=mean_output),
    )


def hot_prefix(
    seed: int,
    n: int = 120,
    hot_share: float = 0.7,
    cold_groups: int = 12,
    system_len: int = 3000,
    question_len: int = 600,
    output_len: int = 16,
    replicas: int = 8,
    num_gpu_blocks: int = 4096,
) -> Workload:
    """One system prompt carries most of the traffic: affinity alone would pile it on one server."""
    rng = random.Random(f"hot-prefix/{seed}")
    w = Words(rng)
    hot = w.text(system_len)
    cold = [w.text(system_len) for _ in range(cold_groups)]
    reqs = []
    for _ in range(n):
        g = -1 if rng.random() < hot_share else rng.randrange(cold_groups)
        system = hot if g < 0 else cold[g]
        reqs.append(BenchRequest("completions", output_len, prompt=system + "\n\n" + w.text(question_len), group=g))
    return Workload(
        "hot-prefix",
        reqs,
        FleetSpec(replicas, num_gpu_blocks),
        dict(
            n=n,
            hot_share=hot_share,
            cold_groups=cold_groups,
            system_len=system_len,
            question_len=question_len,
            output_len=output_len,
        ),
    )


def multi_lora(
    seed: int,
    n: int = 120,
    adapters: int = 8,
    zipf_s: float = 1.2,
    prompt_len: int = 600,
    output_len: int = 16,
    max_loras: int = 2,
    replicas: int = 8,
    num_gpu_blocks: int = 4096,
) -> Workload:
    """Adapters with Zipf popularity; every replica serves all of them, `max_loras` GPU slots each."""
    rng = random.Random(f"multi-lora/{seed}")
    w = Words(rng)
    names = tuple(f"lora-{i}" for i in range(adapters))
    weights = [1.0 / (i + 1) ** zipf_s for i in range(adapters)]
    reqs = []
    for _ in range(n):
        a = rng.choices(range(adapters), weights)[0]
        reqs.append(BenchRequest("completions", output_len, model=names[a], prompt=w.text(prompt_len), group=a))
    return Workload(
        "multi-lora",
        reqs,
        FleetSpec(replicas, num_gpu_blocks, names, max_loras),
        dict(n=n, adapters=adapters, zipf_s=zipf_s, prompt_len=prompt_len, output_len=output_len, max_loras=max_loras),
    )


def long_prompt(
    seed: int,
    n: int = 24,
    prompt_bytes: int = 200 * 1024,
    output_len: int = 16,
    replicas: int = 8,
    num_gpu_blocks: int = 8192,
) -> Workload:
    """200 KB prompts (~40k tokens): the request path carries big bodies, prefill dominates."""
    rng = random.Random(f"long-prompt/{seed}")
    w = Words(rng)
    words = prompt_bytes // 6  # average word (5 letters) plus its space
    reqs = [BenchRequest("completions", output_len, prompt=w.text(words)[:prompt_bytes], group=i) for i in range(n)]
    return Workload(
        "long-prompt",
        reqs,
        FleetSpec(replicas, num_gpu_blocks),
        dict(n=n, prompt_bytes=prompt_bytes, output_len=output_len),
    )


def multi_turn(
    seed: int,
    sessions: int = 24,
    turns: int = 5,
    system_len: int = 1000,
    user_len: int = 200,
    answer_len: int = 16,
    replicas: int = 8,
    num_gpu_blocks: int = 4096,
) -> Workload:
    """Chat sessions whose history grows turn by turn.

    The history carries a fixed assistant text rather than the live answer so the workload stays
    identical for every router (and in virtual time); the prefix through the previous user turn
    is still shared with the previous request of the session.
    """
    rng = random.Random(f"multi-turn/{seed}")
    w = Words(rng)
    convs: list[list[BenchRequest]] = []
    for s in range(sessions):
        msgs: list[tuple[str, str]] = [("system", w.text(system_len))]
        conv = []
        for _ in range(turns):
            msgs.append(("user", w.text(user_len)))
            conv.append(BenchRequest("chat", answer_len, messages=tuple(msgs), group=s))
            msgs.append(("assistant", w.text(answer_len)))
        convs.append(conv)
    # Turn t of every session comes before turn t+1 of any; within a round the session order is
    # shuffled, so a round-robin balancer does not land each session on one server by accident
    # (sessions a multiple of replicas apart would).
    reqs = []
    for t in range(turns):
        order = list(range(sessions))
        rng.shuffle(order)
        reqs += [convs[s][t] for s in order]
    return Workload(
        "multi-turn",
        reqs,
        FleetSpec(replicas, num_gpu_blocks),
        dict(sessions=sessions, turns=turns, system_len=system_len, user_len=user_len, answer_len=answer_len),
    )


def cache_pressure(
    seed: int,
    groups: int = 96,
    system_len: int = 4000,
    question_len: int = 400,
    output_len: int = 64,
    n: int = 300,
    replicas: int = 8,
    num_gpu_blocks: int = 4096,
    prefix_seed: int | None = None,
) -> Workload:
    """llm-d's 73 %-capacity shape (kvevents.md §4), scaled: `groups` system prompts whose total is
    a large share of the fleet's KV (96 x 4,000 tokens = 73 % of 8 x 4,096 blocks x 16, ~6x one
    server), each request one of them (uniformly) plus a fresh question. The prompt set comes from
    `prefix_seed` and stays the same across a ladder's stages, so what each server caches carries
    over from stage to stage as in a running service; questions and order come from `seed`."""
    base = random.Random(f"cache-pressure/prefixes/{seed if prefix_seed is None else prefix_seed}")
    systems = [Words(base).text(system_len) for _ in range(groups)]
    rng = random.Random(f"cache-pressure/{seed}")
    w = Words(rng)
    reqs = []
    for _ in range(n):
        g = rng.randrange(groups)
        reqs.append(BenchRequest("completions", output_len, prompt=systems[g] + "\n\n" + w.text(question_len), group=g))
    return Workload(
        "cache-pressure",
        reqs,
        FleetSpec(replicas, num_gpu_blocks, kv_events=True),
        dict(
            groups=groups,
            system_len=system_len,
            question_len=question_len,
            output_len=output_len,
            resident_share=round(groups * system_len / (replicas * num_gpu_blocks * 16), 3),
        ),
    )


GENERATORS: dict[str, Callable[..., Workload]] = {
    "shared-prefix": shared_prefix,
    "sharegpt-like": sharegpt_like,
    "hot-prefix": hot_prefix,
    "multi-lora": multi_lora,
    "long-prompt": long_prompt,
    "multi-turn": multi_turn,
    "cache-pressure": cache_pressure,
}


def make(name: str, seed: int, **params: Any) -> Workload:
    if name not in GENERATORS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[name](seed, **params)


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    """Open-loop arrival times (seconds of simulated time) of `n` requests at `rate` per second."""
    rng = random.Random(f"arrivals/{seed}/{rate}")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out

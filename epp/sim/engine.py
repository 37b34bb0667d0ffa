"""A clock-free model of one vLLM v1 engine core.

The engine never reads a clock. `step()` schedules one batch the way vLLM v1's scheduler
does, advances `engine.now` by the step's cost-model duration and reports what happened
at the end of the step. A real-time driver sleeps that duration (scaled) between steps; a
discrete-event driver just jumps its clock. Both see the same tokens, cache hits and
metrics for the same sequence of arrivals.

Scheduling, after vllm/v1/core/sched/scheduler.py:
* One token budget per step (max_num_batched_tokens) shared by decodes and prefill chunks;
  running requests first, in order, then waiting requests FCFS while fewer than
  max_num_seqs run. A long prompt is prefilled over several steps (chunked prefill).
* A waiting request first takes the longest cached prefix of full blocks (never the whole
  prompt: the last token is always recomputed so there is something to sample from).
  Blocks are cached when they are scheduled, not when the step ends, so a request admitted
  behind another with the same prefix in the same step reuses its blocks.
* When a running request cannot get a block, the most recently admitted running request
  is preempted (blocks freed, recomputed later); no waiting request is admitted in a step
  that preempted.
* At most max_loras distinct adapters run in a batch; a waiting request whose adapter
  does not fit is skipped and the queue behind it continues. Bringing an adapter into a
  GPU slot costs lora_load_ms in that step.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from epp.sim.costmodel import CostModel
from epp.sim.kvcache import KVCacheManager, KVEvent, block_hashes
from epp.sim.stats import EngineStats

WAITING, RUNNING, FINISHED, ABORTED = "waiting", "running", "finished", "aborted"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    # ~445k tokens: what vLLM reports for Llama-3.1-8B bf16 on an 80 GB H100 at
    # gpu_memory_utilization 0.9 (128 KiB of KV per token).
    num_gpu_blocks: int = 27_800
    block_size: int = 16
    max_model_len: int = 131_072
    max_loras: int = 1
    enable_prefix_caching: bool = True
    hash_seed: int = 0

    def __post_init__(self) -> None:
        if self.max_model_len > self.num_gpu_blocks * self.block_size:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the KV cache "
                f"({self.num_gpu_blocks} blocks x {self.block_size} tokens); a single request could never run"
            )
        if (
            min(self.max_num_seqs, self.max_num_batched_tokens, self.num_gpu_blocks, self.block_size, self.max_loras)
            < 1
        ):
            raise ValueError("engine limits must be >= 1")


@dataclass(eq=False, slots=True)
class SimRequest:
    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    # Tokens generated before the request ends; <= max_tokens (the EOS position when
    # ignore_eos is off). None means max_tokens.
    output_len: int | None = None
    lora: str | None = None
    output_key: int = 0  # seeds the generated token ids
    finish_reason: str = "length"  # reported when output_len is reached
    handle: Any = None  # free for the driver (the HTTP stream, a trace record, ...)

    # Engine-owned state.
    status: str = WAITING
    arrival_time: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = -1  # prompt tokens served from the prefix cache, set at first schedule
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_preemptions: int = 0
    first_scheduled_time: float = -1.0
    first_token_time: float = -1.0
    last_token_time: float = -1.0
    finish_time: float = -1.0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]


@dataclass(slots=True)
class TokenEvent:
    """One generated token, available at the end of the step that produced it."""

    request: SimRequest
    token_id: int
    index: int  # 0 = first token
    finished: bool


@dataclass(slots=True)
class StepResult:
    duration: float  # engine seconds this step took (cost model)
    end_time: float  # engine.now after the step
    tokens: list[TokenEvent]
    kv_events: list[KVEvent]
    num_scheduled: int
    prefill_tokens: int
    decode_seqs: int
    preempted: list[SimRequest]


def _default_token_source() -> Callable[[int, int], int]:
    from epp.sim.tokenizer import OutputVocab, Tokenizer

    return OutputVocab(Tokenizer()).token


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        cost: CostModel | None = None,
        token_source: Callable[[int, int], int] | None = None,
        lora_ids: dict[str, int] | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.cost = cost or CostModel()
        self._token = token_source or _default_token_source()
        self.kv = KVCacheManager(self.config.num_gpu_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.requests: dict[str, SimRequest] = {}
        self.stats = EngineStats()
        self.now = 0.0
        self._lora_ids = dict(lora_ids or {})
        self._resident: OrderedDict[str, None] = OrderedDict()  # adapters in GPU slots, LRU first

    # ---- state ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    def running_loras(self) -> list[str]:
        return sorted({r.lora for r in self.running if r.lora})

    def waiting_loras(self) -> list[str]:
        return sorted({r.lora for r in self.waiting if r.lora})

    def lora_id(self, name: str | None) -> int | None:
        if not name:
            return None
        lid = self._lora_ids.get(name)
        if lid is None:
            lid = self._lora_ids[name] = len(self._lora_ids) + 1
        return lid

    # ---- inputs --------------------------------------------------------------------------

    def advance_to(self, t: float) -> None:
        """Move the engine clock forward (idle time, or a driver that fell behind)."""
        if t > self.now:
            self.now = t

    def add_request(self, req: SimRequest, arrival_time: float | None = None) -> None:
        if req.request_id in self.requests:
            raise ValueError(f"duplicate request id {req.request_id}")
        n = len(req.prompt_token_ids)
        if n == 0:
            raise ValueError("empty prompt")
        if req.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if n + req.max_tokens > self.config.max_model_len:
            raise ValueError(
                f"prompt ({n}) + max_tokens ({req.max_tokens}) exceeds max_model_len {self.config.max_model_len}"
            )
        if req.output_len is None or req.output_len > req.max_tokens:
            req.output_len = req.max_tokens
        req.output_len = max(1, req.output_len)
        req.arrival_time = self.now if arrival_time is None else arrival_time
        req.token_ids = list(req.prompt_token_ids)
        req.status = WAITING
        self.requests[req.request_id] = req
        self.waiting.append(req)

    def abort(self, request_id: str) -> bool:
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        if req.status == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        elif req.status == RUNNING:
            self.running.remove(req)
        self._release(req)
        req.status = ABORTED
        req.finish_time = self.now
        self.stats.finished["abort"] += 1
        return True

    # ---- the step ------------------------------------------------------------------------

    def step(self) -> StepResult:
        cfg, kv, stats = self.config, self.kv, self.stats
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int]] = []
        preempted: list[SimRequest] = []
        active_loras = {r.lora for r in self.running if r.lora}
        lora_loads = 0

        # Running requests first.
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            num_new = min(len(req.token_ids) - req.num_computed_tokens, budget)
            need = -(-(req.num_computed_tokens + num_new) // bs) - len(req.block_ids)
            got_slots = True
            while need > 0:
                new = kv.allocate(need)
                if new is not None:
                    req.block_ids.extend(new)
                    break
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is req:
                    got_slots = False
                    break
            if not got_slots:
                break
            scheduled.append((req, num_new))
            self._register(req, req.num_computed_tokens + num_new)
            budget -= num_new
            i += 1
        if preempted:
            active_loras = {r.lora for r in running if r.lora}

        # Then waiting requests, FCFS, unless this step had to preempt.
        if not preempted and self.waiting:
            skipped: list[SimRequest] = []
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                req = waiting[0]
                lora = req.lora
                if lora and lora not in active_loras and len(active_loras) >= cfg.max_loras:
                    skipped.append(waiting.popleft())
                    continue
                self._ensure_hashes(req)
                num_tokens = len(req.token_ids)
                hit = kv.lookup(req.block_hashes, (num_tokens - 1) // bs)
                num_computed = len(hit) * bs
                num_new = min(num_tokens - num_computed, budget)
                need = -(-(num_computed + num_new) // bs) - len(hit)
                if need > kv.num_free - kv.count_free(hit):
                    break
                kv.touch(hit)
                new = kv.allocate(need) if need > 0 else []
                assert new is not None
                waiting.popleft()
                req.block_ids = hit + new
                req.num_computed_tokens = num_computed
                req.num_registered_blocks = len(hit)
                stats.prefix_cache_queries += num_tokens
                stats.prefix_cache_hits += num_computed
                if req.num_cached_tokens < 0:
                    req.num_cached_tokens = min(num_computed, req.num_prompt_tokens)
                    req.first_scheduled_time = self.now
                if lora:
                    if lora not in active_loras:
                        active_loras.add(lora)
                    if lora in self._resident:
                        self._resident.move_to_end(lora)
                    else:
                        lora_loads += 1
                        stats.lora_loads += 1
                        if len(self._resident) >= cfg.max_loras:
                            for name in self._resident:
                                if name not in active_loras:
                                    del self._resident[name]
                                    break
                        self._resident[lora] = None
                req.status = RUNNING
                running.append(req)
                scheduled.append((req, num_new))
                self._register(req, num_computed + num_new)
                budget -= num_new
            if skipped:
                waiting.extendleft(reversed(skipped))

        # Cost of the batch.
        prefill_tokens = 0
        pairs = 0.0
        decode_seqs = 0
        kv_read = 0
        any_lora = False
        for req, n in scheduled:
            if n == 1 and req.num_computed_tokens >= req.num_prompt_tokens:
                decode_seqs += 1
                kv_read += req.num_computed_tokens
            else:
                prefill_tokens += n
                pairs += n * (req.num_computed_tokens + n / 2)
            if req.lora:
                any_lora = True
        duration = self.cost.step_seconds(prefill_tokens, pairs, decode_seqs, kv_read, any_lora, lora_loads)
        end = self.now + duration
        self.now = end

        # Execute: advance computed tokens, sample.
        tokens: list[TokenEvent] = []
        any_finished = False
        for req, n in scheduled:
            req.num_computed_tokens += n
            if req.num_computed_tokens < len(req.token_ids):
                continue  # a prefill chunk that does not finish the prompt samples nothing
            index = len(req.token_ids) - len(req.prompt_token_ids)
            tid = self._token(req.output_key, index)
            req.token_ids.append(tid)
            if index == 0:
                req.first_token_time = end
                stats.ttft.observe(end - req.arrival_time)
                stats.prompt_tokens += req.num_prompt_tokens
            else:
                stats.itl.observe(end - req.last_token_time)
            req.last_token_time = end
            stats.generation_tokens += 1
            finished = index + 1 >= req.output_len
            tokens.append(TokenEvent(req, tid, index, finished))
            if finished:
                any_finished = True
                self._finish(req, end)
        if any_finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        if tokens:
            stats.version += 1

        kv_events = kv.events
        kv.events = []
        return StepResult(duration, end, tokens, kv_events, len(scheduled), prefill_tokens, decode_seqs, preempted)

    # ---- internals -----------------------------------------------------------------------

    def _ensure_hashes(self, req: SimRequest) -> None:
        bs = self.config.block_size
        have = len(req.block_hashes)
        if have < len(req.token_ids) // bs:
            parent = req.block_hashes[-1] if have else None
            req.block_hashes.extend(
                block_hashes(req.token_ids, bs, self.config.hash_seed, req.lora, start=have, parent=parent)
            )

    def _register(self, req: SimRequest, upto: int) -> None:
        """Cache the blocks this step fills, at scheduling time as vLLM v1 does (allocate_slots
        caches up to num_computed + num_new tokens before the forward pass): a request admitted
        later in the same step hits them, since each layer writes the batch's KV before attending."""
        full = upto // self.config.block_size
        if full > req.num_registered_blocks:
            self._ensure_hashes(req)
            self.kv.cache_blocks(
                req.block_ids,
                req.block_hashes,
                req.token_ids,
                req.num_registered_blocks,
                full,
                self.lora_id(req.lora),
                req.lora,
            )
            req.num_registered_blocks = full

    def _release(self, req: SimRequest) -> None:
        if req.block_ids:
            self.kv.free(req.block_ids)
            req.block_ids = []
        req.num_registered_blocks = 0

    def _preempt(self, req: SimRequest) -> None:
        self._release(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = WAITING
        self.waiting.appendleft(req)
        self.stats.preemptions += 1

    def _finish(self, req: SimRequest, t: float) -> None:
        self._release(req)
        req.status = FINISHED
        req.finish_time = t
        self.requests.pop(req.request_id, None)
        s = self.stats
        s.finished[req.finish_reason] += 1
        s.e2e.observe(t - req.arrival_time)
        s.queue_time.observe(max(0.0, req.first_scheduled_time - req.arrival_time))
        s.prefill_time.observe(req.first_token_time - req.first_scheduled_time)
        s.decode_time.observe(t - req.first_token_time)
        s.request_prompt_tokens.observe(req.num_prompt_tokens)
        s.request_generation_tokens.observe(req.num_output_tokens)

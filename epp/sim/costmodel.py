"""How long one engine step takes.

    step = slowdown * ( step_overhead
                        + prefill_per_token  * prefill_tokens
                        + prefill_attn       * sum(new_tokens * (context_before + new_tokens / 2))
                        + decode_per_seq     * decode_seqs
                        + kv_read_per_token  * kv_tokens_read_by_decodes
                        + lora_overhead      * [any adapter in the batch]
                        + lora_load          * adapters_loaded_this_step )

Defaults model Llama-3.1-8B-Instruct (bf16) on one H100-80GB SXM with vLLM v1, CUDA graphs
and chunked prefill on. Where each number comes from (see docs/simulator.md for more):

* step_overhead 10 ms: a decode step must stream all 16 GB of weights through HBM
  (16 GB / 3.35 TB/s = 4.8 ms) plus scheduler, sampling, detokenization and the
  engine-core <-> API-server round trip; published vLLM runs of 8B on H100 show
  ITL of 10-15 ms at concurrency 1 (llm-d-inference-sim documents the same range).
* prefill_per_token 0.1 ms: 2 x 8e9 FLOP per token at ~16 % of the 989 TFLOPS bf16 peak
  for small (<= 512 token) chunks; with the overheads this gives TTFT ~= 66 ms for a
  256-token prompt at low load, inside the 60-120 ms range measured for this setup.
* prefill_attn 1.75e-6 ms per (new token x context token): 4 * 32 layers * 4096 hidden
  FLOP per pair at ~300 TFLOPS; makes long prompts super-linear, as they are.
* decode_per_seq 0.08 ms: per-sequence sampling, logits and MLP growth once a batch
  leaves the pure memory-bound regime; ITL ~= 37 ms at 256 sequences of 500 tokens.
* kv_read_per_token 5e-5 ms: 128 KiB of K/V per token (32 layers x 8 KV heads x 128 dim
  x 2 x bf16) read at ~2.6 TB/s effective.
* lora_overhead 1.5 ms: punica/SGMV kernels on every layer when any adapter is batched.
* lora_load 50 ms: copying a rank-16 adapter from host memory into a GPU slot.
* frontend_latency 30 ms: HTTP, tokenization and hand-off to the engine core before a
  request can be scheduled; applied by the drivers, not the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class CostModel:
    step_overhead_ms: float = 10.0
    prefill_ms_per_token: float = 0.10
    prefill_attn_ms_per_pair: float = 1.75e-6
    decode_ms_per_seq: float = 0.08
    kv_read_ms_per_token: float = 5e-5
    lora_overhead_ms: float = 1.5
    lora_load_ms: float = 50.0
    frontend_latency_ms: float = 30.0
    # Multiplies every step: a slow or throttled replica (--slow-replica IDX:FACTOR).
    slowdown: float = 1.0

    def step_seconds(
        self,
        prefill_tokens: int,
        prefill_attn_pairs: float,
        decode_seqs: int,
        kv_tokens_read: int,
        lora_in_batch: bool,
        lora_loads: int,
    ) -> float:
        ms = (
            self.step_overhead_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.prefill_attn_ms_per_pair * prefill_attn_pairs
            + self.decode_ms_per_seq * decode_seqs
            + self.kv_read_ms_per_token * kv_tokens_read
            + (self.lora_overhead_ms if lora_in_batch else 0.0)
            + self.lora_load_ms * lora_loads
        )
        return ms * self.slowdown / 1000.0

    @property
    def frontend_latency(self) -> float:
        return self.frontend_latency_ms / 1000.0

    def prefill_seconds(self, new_tokens: int, context_before: int = 0, lora: bool = False) -> float:
        """One prefill-only step for a single request (no other work in the batch):
        what a request's TTFT costs at an idle engine, excluding frontend latency."""
        pairs = new_tokens * (context_before + new_tokens / 2)
        return self.step_seconds(new_tokens, pairs, 0, 0, lora, 0)

    def decode_seconds(self, batch: int, context_tokens: int) -> float:
        """One decode-only step: the ITL of `batch` sequences holding `context_tokens` in total."""
        return self.step_seconds(0, 0.0, batch, context_tokens, False, 0)


# Flag name -> field; every coefficient is overridable from the command line.
FLAG_FIELDS: dict[str, str] = {
    f"--{f.name.replace('_', '-')}": f.name for f in fields(CostModel) if f.name != "slowdown"
}

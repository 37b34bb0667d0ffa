"""Which endpoint holds which prompt block, from the servers' own KV events (precise index).

Written by the ingester thread (cold path), read by the scheduling cycle (hot path); one lock
keeps each event atomic, and a read takes it for one walk over a prompt's keys.

Layout, chosen for memory (Python objects are large; see `BYTES_PER_BLOCK`):

* `_held`: key -> holder mask, LRU-ordered. Endpoint p has bit 2p (GPU) and 2p+1 (CPU
  offload), so one int answers "who holds this block, on which tier". Bounded by
  `max_blocks`; beyond it the least recently stored key goes.
* per endpoint, `engine`: the engine's hash of each block it holds -> our key (the bridge:
  a BlockStored names its parent, a BlockRemoved its blocks, by engine hash), and `refs`:
  our key -> store counts per tier, because each physical copy is stored and removed
  separately and offload connectors send duplicates.

The engine's block size E need not be ours (B) when one divides the other (llm-d maps by the
length ratio too):
* E = k·B (the engine's blocks are coarser): an engine block is k of our keys; the bridge
  holds the tuple, and removing the engine block removes all k.
* B = k·E (finer): k engine blocks make one of our keys, complete once its last one is
  stored, possibly in a later event than the first. The bridge then holds a `_Fine` record
  per engine block: the key the run chains from, the tokens of our block's engine blocks so
  far, and which of our keys (one per continuation) it is part of; removing any of those
  engine blocks removes those keys, since the server no longer holds all of the block.
Other ratios cannot be aligned and are counted as `size_mismatch`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from epp.datalayer.kvevents.decode import Cleared, Event, Removed, Stored
from epp.datalayer.kvevents.keys import block_key, chain_keys, pack_tokens, root_key

# Measured with tracemalloc (tests/unit/kvevents/test_index.py) with 64-bit hashes: ~80 B per
# distinct block (its key and holder mask) plus ~135 B per endpoint holding it (bridge and refs)
# when the engine's block size is ours.
KEY_BYTES = 80
REFS_BYTES = 45  # per key an endpoint holds: its store counts
BRIDGE_BYTES = 90  # per engine block an endpoint holds, when its block size is ours
HOLDER_BYTES = REFS_BYTES + BRIDGE_BYTES


def bridge_bytes(engine_block: int, ours: int) -> int:
    """Bytes per bridge entry (tracemalloc-fitted within ~10 %, test_index.py): an int when
    block sizes agree, a tuple of k keys when the engine's blocks are k of ours, a `_Fine`
    record with its partial block's tokens (2·E·(k-1) bytes on average) when k make one."""
    if engine_block == ours or not engine_block:
        return BRIDGE_BYTES
    if engine_block > ours:
        return BRIDGE_BYTES + 33 * (engine_block // ours)
    k = ours // engine_block
    return 260 + 2 * engine_block * (k - 1) + 4 * k


_CPU_SHIFT = 20  # refs pack the GPU count in the low bits, the CPU count above
_LOW = (1 << _CPU_SHIFT) - 1
TIER_WEIGHTS = {"gpu": 1.0, "cpu": 0.8}


@dataclass(slots=True)
class _Fine:
    """An engine block smaller than ours (B = k·E): where its run stands in our block."""

    prev: int  # the key our current block chains from (this block's own key once it completes one)
    pend: bytes  # packed tokens of our current block's engine blocks up to this one (b"" when complete)
    members: tuple[int, ...]  # their engine hashes, this one last (() when complete)
    extra: tuple[Any, ...]  # extra keys gathered for our current block so far
    keys: list[int] = field(default_factory=list)  # our complete blocks this engine block is part of


_Bridge = int | tuple[int, ...] | _Fine


def _keys_of(v: _Bridge) -> tuple[int, ...] | list[int]:
    if isinstance(v, int):
        return (v,)
    if isinstance(v, tuple):
        return v
    return v.keys


@dataclass(slots=True)
class _Pod:
    bit: int  # endpoint slot p: GPU bit 2p, CPU bit 2p+1
    model: str
    engine: dict[int, _Bridge] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    block_size: int = 0  # the engine's, from its events


@dataclass(slots=True)
class IndexCounters:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    orphans: int = 0  # BlockStored whose parent this index never saw: dropped
    size_mismatch: int = 0  # engine block size differs from the index's
    evicted: int = 0  # keys dropped at the memory bound


class KVBlockIndex:
    def __init__(
        self,
        block_size: int = 16,
        max_blocks: int = 2_000_000,
        hash_seed: str = "",
        cpu_weight: float = TIER_WEIGHTS["cpu"],
        exact: bool = False,
    ) -> None:
        self.block_size = block_size
        # Exact-engine-hash mode (enginehash.py): keys are the engine's own block hashes, which
        # requests reproduce; no bridge lookups, so orphans are indexed too.
        self.exact = exact
        self.max_blocks = max_blocks
        self.hash_seed = hash_seed
        self.cpu_weight = cpu_weight
        self._held: OrderedDict[int, int] = OrderedDict()
        self._pods: dict[str, _Pod] = {}
        self._by_bit: dict[int, str] = {}
        self._free_bits: list[int] = []
        self._next_bit = 0
        self._lock = threading.Lock()
        self.counters = IndexCounters()
        self._cpu_entries = 0  # nonzero once any CPU-tier copy exists: only then weigh tiers

    # ---- endpoints ---------------------------------------------------------------------------

    def add_endpoint(self, name: str, model: str) -> None:
        with self._lock:
            pod = self._pods.get(name)
            if pod is not None:
                pod.model = model
                return
            bit = self._free_bits.pop() if self._free_bits else self._alloc_bit()
            self._pods[name] = _Pod(bit, model)
            self._by_bit[bit] = name

    def _alloc_bit(self) -> int:
        b = self._next_bit
        self._next_bit += 1
        return b

    def remove_endpoint(self, name: str) -> None:
        with self._lock:
            pod = self._pods.pop(name, None)
            if pod is None:
                return
            self._clear(pod)
            del self._by_bit[pod.bit]
            self._free_bits.append(pod.bit)

    def clear_endpoint(self, name: str) -> None:
        with self._lock:
            pod = self._pods.get(name)
            if pod is not None:
                self._clear(pod)
                self.counters.cleared += 1

    def endpoints(self) -> list[str]:
        return list(self._pods)

    def models(self) -> set[str]:
        """The base models the endpoints serve (from their topics or the config)."""
        return {p.model for p in list(self._pods.values()) if p.model}

    def __len__(self) -> int:
        return len(self._held)

    def blocks_of(self, name: str) -> int:
        pod = self._pods.get(name)
        return len(pod.refs) if pod is not None else 0

    @property
    def memory_bytes(self) -> int:
        total = KEY_BYTES * len(self._held)
        for p in list(self._pods.values()):
            total += REFS_BYTES * len(p.refs) + bridge_bytes(p.block_size, self.block_size) * len(p.engine)
        return total

    # ---- events (ingester thread) ----------------------------------------------------------------

    def apply(self, name: str, events: list[Event]) -> None:
        with self._lock:
            pod = self._pods.get(name)
            if pod is None:
                return
            for ev in events:
                if isinstance(ev, Stored):
                    self._stored(pod, ev)
                elif isinstance(ev, Removed):
                    self._removed(pod, ev)
                elif isinstance(ev, Cleared):
                    self._clear(pod)
                    self.counters.cleared += 1

    def _stored(self, pod: _Pod, ev: Stored) -> None:
        c = self.counters
        if not ev.hashes:
            return
        tier_shift = 0 if ev.tier == "gpu" else 1
        if not ev.token_ids:
            # A copy of blocks the pod already named (CPU offload): resolve through the bridge.
            for h in ev.hashes:
                v = pod.engine.get(h)
                if v is not None:
                    for key in _keys_of(v):
                        self._add(pod, key, tier_shift)
            c.stored += 1
            return
        size, ours = ev.block_size, self.block_size
        if self.exact:
            if size != ours:  # the engine hashes its own blocks: requests must use its size
                c.size_mismatch += 1
                return
            for h in ev.hashes:
                pod.engine[h] = h
                self._add(pod, h, tier_shift)
            pod.block_size = size
            c.stored += 1
            return
        if size <= 0 or (size % ours and ours % size):
            c.size_mismatch += 1
            return
        pod.block_size = size
        lora = ev.lora_name
        extras = None
        first: tuple = ()
        if ev.extra_keys is not None:
            extras = [tuple(x for x in (e or ()) if x != lora) for e in ev.extra_keys]
            if ev.parent is None and extras:
                first, extras[0] = extras[0], ()
        parent: _Bridge | None
        if ev.parent is None:
            parent = root_key(lora or pod.model, self.hash_seed)
        else:
            parent = pod.engine.get(ev.parent)
            if parent is None:
                c.orphans += 1
                return
        if size < ours:
            self._stored_fine(pod, ev, parent, first, extras, tier_shift)
        elif isinstance(parent, _Fine):
            c.size_mismatch += 1  # the parent was stored at another block size: cannot chain
            return
        else:
            prev = parent if isinstance(parent, int) else parent[-1]
            k = size // ours
            if k > 1 and extras is not None:
                # An engine block's extras go to the first of its k keys.
                extras = [x for e in extras for x in (e, *((),) * (k - 1))]
            keys = chain_keys(prev, ev.token_ids, ours, first, extras)
            engine = pod.engine
            for i, h in enumerate(ev.hashes):
                ks = keys[i * k : (i + 1) * k]
                if len(ks) < k:
                    break
                engine[h] = ks[0] if k == 1 else tuple(ks)
                for key in ks:
                    self._add(pod, key, tier_shift)
        c.stored += 1

    def _stored_fine(
        self, pod: _Pod, ev: Stored, parent: _Bridge, first: tuple, extras: list[tuple] | None, tier_shift: int
    ) -> None:
        """Engine blocks of E = B/k tokens: one of our keys completes with every k-th."""
        if isinstance(parent, _Fine):
            prev, pend, members, extra = parent.prev, parent.pend, parent.members, parent.extra
        elif isinstance(parent, int) and ev.parent is None:
            prev, pend, members, extra = parent, b"", (), first
        else:  # a parent stored at another block size
            self.counters.size_mismatch += 1
            return
        engine = pod.engine
        step = 4 * ev.block_size
        packed = pack_tokens(ev.token_ids)
        full = 4 * self.block_size
        for i, h in enumerate(ev.hashes):
            chunk = packed[i * step : (i + 1) * step]
            if len(chunk) < step:
                break
            if extras is not None and i < len(extras) and extras[i]:
                extra = (*extra, *extras[i])
            pend += chunk
            members = (*members, h)
            if len(pend) < full:
                old = engine.get(h)
                engine[h] = _Fine(prev, pend, members, extra, old.keys if isinstance(old, _Fine) else [])
                continue
            key = block_key(prev, pend, extra)
            for m in members[:-1]:
                v = engine.get(m)
                if isinstance(v, _Fine) and key not in v.keys:
                    v.keys.append(key)
            engine[h] = _Fine(key, b"", (), (), [key])
            self._add(pod, key, tier_shift)
            prev, pend, members, extra = key, b"", (), ()

    def _add(self, pod: _Pod, key: int, tier_shift: int) -> None:
        refs = pod.refs
        packed = refs.get(key, 0)
        refs[key] = packed + (1 << (_CPU_SHIFT * tier_shift))
        held = self._held
        bit = 1 << (2 * pod.bit + tier_shift)
        mask = held.get(key)
        if mask is None:
            held[key] = bit
            if len(held) > self.max_blocks:
                self._evict_oldest()
        else:
            if not mask & bit:
                held[key] = mask | bit
            held.move_to_end(key)
        if tier_shift:
            self._cpu_entries += 1

    def _removed(self, pod: _Pod, ev: Removed) -> None:
        tier_shift = 0 if ev.tier == "gpu" else 1
        engine = pod.engine
        refs = pod.refs
        for h in ev.hashes:
            v = engine.get(h)
            if v is None:
                continue
            keys = _keys_of(v)
            for key in keys:
                self._drop(pod, key, tier_shift)
            # The bridge entry goes with the last copy of its keys (or when its key went at
            # the memory bound); a block of ours still being filled has no key yet: it goes.
            if not any(key in refs for key in keys):
                del engine[h]
        self.counters.removed += 1

    def _drop(self, pod: _Pod, key: int, tier_shift: int) -> None:
        """One copy of `key` on that tier is gone."""
        packed = pod.refs.get(key, 0)
        count = (packed >> (_CPU_SHIFT * tier_shift)) & _LOW
        if count == 0:
            return
        packed -= 1 << (_CPU_SHIFT * tier_shift)
        if count == 1:  # that tier's last copy on this pod
            held = self._held
            mask = held.get(key)
            if mask is not None:
                mask &= ~(1 << (2 * pod.bit + tier_shift))
                if mask:
                    held[key] = mask
                else:
                    del held[key]
        if packed:
            pod.refs[key] = packed
        else:
            del pod.refs[key]

    def _clear(self, pod: _Pod) -> None:
        held = self._held
        keep = ~(3 << (2 * pod.bit))
        for key in pod.refs:
            mask = held.get(key)
            if mask is not None:
                mask &= keep
                if mask:
                    held[key] = mask
                else:
                    del held[key]
        pod.refs.clear()
        pod.engine.clear()

    def _evict_oldest(self) -> None:
        key, mask = self._held.popitem(last=False)
        self.counters.evicted += 1
        bit = 0
        while mask:
            if mask & 3:
                name = self._by_bit.get(bit)
                pod = self._pods.get(name) if name is not None else None
                if pod is not None:
                    pod.refs.pop(key, None)
                    # the bridge entry goes when the engine removes or the pod clears; children
                    # of an evicted key then resolve to a key nobody holds, which is harmless
            mask >>= 2
            bit += 1

    # ---- matching (hot path) -------------------------------------------------------------------

    def match(self, keys: list[int]) -> dict[str, float]:
        """Per endpoint, its run of leading blocks of `keys`, each block counted at the weight of
        the best tier it has it on (GPU 1, CPU `cpu_weight`)."""
        if not keys:
            return {}
        out: dict[str, float] = {}
        with self._lock:
            held = self._held
            alive = -1
            i = 0
            weigh = self._cpu_entries > 0
            cpu_hits: dict[int, int] = {}
            for key in keys:
                v = held.get(key)
                if not v:
                    break
                anym = (v | (v >> 1)) & _EVEN.get(v.bit_length(), v.bit_length())
                cur = alive & anym
                if not cur:
                    break
                if alive != -1 and cur != alive:
                    self._record(alive & ~cur, i, out, cpu_hits)
                if weigh:
                    cpu_only = (v >> 1) & ~v & cur
                    while cpu_only:
                        low = cpu_only & -cpu_only
                        cpu_hits[low] = cpu_hits.get(low, 0) + 1
                        cpu_only ^= low
                alive = cur
                i += 1
            if i and alive != -1:
                self._record(alive, i, out, cpu_hits)
        return out

    def _record(self, mask: int, count: int, out: dict[str, float], cpu_hits: dict[int, int]) -> None:
        by_bit = self._by_bit
        w = 1.0 - self.cpu_weight
        while mask:
            low = mask & -mask
            name = by_bit.get((low.bit_length() - 1) >> 1)
            if name is not None:
                out[name] = count - w * cpu_hits.get(low, 0) if cpu_hits else float(count)
            mask ^= low


class _EvenMasks(dict[int, int]):
    """bit length -> mask of the even bits below it (the GPU bits), built on demand."""

    def get(self, n: int, default: int = 0) -> int:  # type: ignore[override]
        m = dict.get(self, n)
        if m is None:
            m = 0
            for b in range(0, n + 1, 2):
                m |= 1 << b
            self[n] = m
        return m


_EVEN = _EvenMasks()

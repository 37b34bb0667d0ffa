"""Paged KV cache with automatic prefix caching, after vLLM v1's BlockPool/KVCacheManager.

* A block holds `block_size` tokens. Only full blocks are cached, keyed by a chained hash
  hash(parent_hash, token ids of the block, adapter), so a hit on block i implies hits on
  blocks 0..i-1.
* A block whose reference count drops to zero goes to the tail of the free queue but keeps
  its hash: it can still be hit (and is then taken back out of the queue) until an
  allocation pops it from the head, which evicts it (a BlockRemoved event). A finished
  request frees its blocks tail-first, so the end of a sequence is evicted before its
  shared prefix.
* Usage is 1 - free/total, where cached-but-unreferenced blocks count as free, which is
  what vLLM reports as kv_cache_usage_perc.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass

import xxhash


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    lora_name: str | None


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: list[int]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def block_hashes(
    token_ids: list[int], block_size: int, seed: int, lora: str | None, start: int = 0, parent: int | None = None
) -> list[int]:
    """Chained hashes of the full blocks of token_ids from block index `start`.
    `parent` is the hash of block start-1 (None when start == 0)."""
    out: list[int] = []
    extra = lora.encode() if lora else b""
    prev = parent if parent is not None else seed
    n_full = len(token_ids) // block_size
    for b in range(start, n_full):
        h = xxhash.xxh3_64()
        h.update(prev.to_bytes(8, "little"))
        h.update(array("l", token_ids[b * block_size : (b + 1) * block_size]).tobytes())
        h.update(extra)
        prev = h.intdigest()
        out.append(prev)
    return out


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # block hash -> block id
        # Insertion-ordered: head = least recently freed = next to evict.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.events: list[KVEvent] = []  # drained by the engine after every step

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    def lookup(self, hashes: list[int], max_blocks: int) -> list[int]:
        """Block ids of the longest cached prefix of `hashes` (at most max_blocks)."""
        if not self.enable_prefix_caching:
            return []
        hit: list[int] = []
        cached = self._cached
        for h in hashes[:max_blocks]:
            b = cached.get(h)
            if b is None:
                break
            hit.append(b)
        return hit

    def count_free(self, block_ids: list[int]) -> int:
        """How many of these blocks sit in the free queue (touching them uses up free space)."""
        ref = self._ref
        return sum(1 for b in block_ids if ref[b] == 0)

    def touch(self, block_ids: list[int]) -> None:
        ref, free = self._ref, self._free
        for b in block_ids:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        out: list[int] = []
        removed: list[int] = []
        free, ref, bhash, cached = self._free, self._ref, self._hash, self._cached
        for _ in range(n):
            b, _unused = free.popitem(last=False)
            h = bhash[b]
            if h is not None:
                bhash[b] = None
                if cached.get(h) == b:
                    del cached[h]
                    removed.append(h)
            ref[b] = 1
            out.append(b)
        if removed:
            self.events.append(BlockRemoved(removed))
        return out

    def free(self, block_ids: list[int]) -> None:
        ref, free = self._ref, self._free
        for b in reversed(block_ids):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def cache_blocks(
        self,
        block_ids: list[int],
        hashes: list[int],
        token_ids: list[int],
        start: int,
        end: int,
        lora_id: int | None,
        lora_name: str | None,
    ) -> None:
        """Register blocks [start, end) of a request as cached (they are now full and computed)."""
        if not self.enable_prefix_caching or end <= start:
            return
        bhash, cached = self._hash, self._cached
        new_hashes: list[int] = []
        first = -1
        for i in range(start, end):
            b = block_ids[i]
            h = hashes[i]
            if bhash[b] is not None:
                continue
            if h in cached:
                # Another request computed the same block concurrently; vLLM keeps the
                # first copy and leaves this one unhashed (it is freed uncached).
                continue
            bhash[b] = h
            cached[h] = b
            if first < 0:
                first = i
            elif i != first + len(new_hashes):
                # Non-contiguous run: flush so each event's parent/token_ids stay consistent.
                self._emit_stored(new_hashes, hashes, token_ids, first, lora_id, lora_name)
                new_hashes, first = [], i
            new_hashes.append(h)
        if new_hashes:
            self._emit_stored(new_hashes, hashes, token_ids, first, lora_id, lora_name)

    def _emit_stored(
        self,
        new: list[int],
        hashes: list[int],
        token_ids: list[int],
        first: int,
        lora_id: int | None,
        lora_name: str | None,
    ) -> None:
        bs = self.block_size
        self.events.append(
            BlockStored(
                block_hashes=new,
                parent_block_hash=hashes[first - 1] if first > 0 else None,
                token_ids=token_ids[first * bs : (first + len(new)) * bs],
                block_size=bs,
                lora_id=lora_id,
                lora_name=lora_name,
            )
        )

    def reset(self) -> None:
        """Drop every unreferenced cached block (vLLM's reset_prefix_cache)."""
        for h, b in list(self._cached.items()):
            if self._ref[b] == 0:
                self._hash[b] = None
                del self._cached[h]
        self.events.append(AllBlocksCleared())

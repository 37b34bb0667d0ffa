"""An approximate index of which endpoint holds which prompt-prefix blocks.

It records routing decisions (not the servers' real cache state), so each endpoint's entries
are an LRU bounded by that endpoint's KV capacity in blocks: beyond it the server would have
evicted too. Memory is bounded by the sum of those capacities and reported.

`memory_bytes` is what the structures really hold (within a few percent of tracemalloc's
count, tests/unit/datalayer/test_prefix_index_memory.py): the tables' own sizes from
sys.getsizeof (O(endpoints), no walk over entries), one int and one holder set per distinct
hash, plus what holder sets grew by when several endpoints hold the same block (tracked as
it happens). A per-entry constant cannot be honest: an entry costs ~370 B when each block
has one holder, ~180 B when 32 endpoints share every block.
"""

from __future__ import annotations

import struct
import sys
from collections import OrderedDict

import xxhash

_LE64 = struct.Struct("<Q")
_sizeof = sys.getsizeof
# Per distinct hash: its int (xxh64 values need 3 30-bit digits) and its holder set at its
# smallest (8-slot table, up to 4 holders).
_EMPTY_SET_BYTES = _sizeof(set())
_PER_HASH_BYTES = _sizeof(2**63) + _EMPTY_SET_BYTES


def block_hashes(model: str, cache_salt: str, data: bytes, chars_per_block: int, max_blocks: int) -> list[int]:
    """Chained xxh64 over fixed-size blocks, seeded by model and cache salt (reference scheme).

    Input shorter than one block yields nothing; a trailing partial block is hashed too.
    """
    if len(data) < chars_per_block or max_blocks <= 0:
        return []
    data = data[: chars_per_block * max_blocks]
    h = xxhash.xxh64_intdigest((model + cache_salt).encode())
    out = []
    pack = _LE64.pack
    digest = xxhash.xxh64_intdigest
    for start in range(0, len(data), chars_per_block):
        h = digest(data[start : start + chars_per_block] + pack(h))
        out.append(h)
    return out


class PrefixIndex:
    def __init__(self, default_capacity: int) -> None:
        self.default_capacity = default_capacity
        self._holders: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._set_growth = 0  # bytes holder sets grew past their smallest size

    def __len__(self) -> int:
        # list(): the metrics endpoint reads this from another thread while the loop adds.
        return sum(len(lru) for lru in list(self._lru.values()))

    @property
    def memory_bytes(self) -> int:
        lrus = list(self._lru.values())
        return (
            _sizeof(self._holders)
            + len(self._holders) * _PER_HASH_BYTES
            + self._set_growth
            + sum(_sizeof(lru) for lru in lrus)
            + _sizeof(self._lru)
            + _sizeof(self._capacity)
        )

    def match(self, hashes: list[int]) -> dict[str, int]:
        """Per endpoint, how many leading blocks of `hashes` it holds (consecutively from block 0)."""
        counts: dict[str, int] = {}
        alive: set[str] | None = None
        holders = self._holders
        for i, h in enumerate(hashes):
            pods = holders.get(h)
            if not pods:
                break
            alive = set(pods) if alive is None else alive & pods
            if not alive:
                break
            for p in alive:
                counts[p] = i + 1
        return counts

    def add(self, endpoint: str, hashes: list[int], capacity: int = 0) -> None:
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = OrderedDict()
        cap = capacity if capacity > 0 else self.default_capacity
        self._capacity[endpoint] = cap
        holders = self._holders
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            pods = holders.get(h)
            if pods is None:
                holders[h] = {endpoint}
            else:
                before = _sizeof(pods)
                pods.add(endpoint)
                self._set_growth += _sizeof(pods) - before
        while len(lru) > cap:
            old, _ = lru.popitem(last=False)
            self._forget(old, endpoint)

    def remove_endpoint(self, endpoint: str) -> None:
        lru = self._lru.pop(endpoint, None)
        self._capacity.pop(endpoint, None)
        if lru:
            for h in lru:
                self._forget(h, endpoint)

    def endpoints(self) -> set[str]:
        return set(self._lru)

    def _forget(self, h: int, endpoint: str) -> None:
        pods = self._holders.get(h)
        if pods is not None:
            pods.discard(endpoint)
            if not pods:
                del self._holders[h]
                self._set_growth -= _sizeof(pods) - _EMPTY_SET_BYTES

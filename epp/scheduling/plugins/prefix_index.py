"""An approximate index of which endpoint holds which prompt-prefix blocks.

It records routing decisions (not the servers' real cache state), so each endpoint's entries
are an LRU bounded by that endpoint's KV capacity in blocks: beyond it the server would have
evicted too. Memory is bounded by the sum of those capacities and reported.

`memory_bytes` is what the structures really hold (within a few percent of tracemalloc's
count, tests/unit/datalayer/test_prefix_index_memory.py): the tables' own sizes from
sys.getsizeof (O(endpoints), no walk over entries), one int per distinct hash, plus the
holder sets of hashes several endpoints hold (tracked as they are made, grow and go). A
per-entry constant cannot be honest: an entry costs ~160 B when each block has one holder,
more or less when many endpoints share blocks (a set per shared block, one entry per holder).
"""

from __future__ import annotations

import struct
import sys
from collections import OrderedDict

import xxhash

_LE64 = struct.Struct("<Q")
_sizeof = sys.getsizeof
# Per distinct hash: its int (xxh64 values need 3 30-bit digits); a holder set only when shared.
_HASH_BYTES = _sizeof(2**63)


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
    """Per endpoint an LRU of block hashes; per hash who holds it.

    A hash held by one endpoint (nearly every hash: a prompt's own blocks, a prefix the
    affinity keeps on one server) maps to that endpoint's name itself, not to a one-element
    set: a set costs ~216 bytes and is an object the garbage collector walks, and at the bound
    (millions of entries) both add up - memory per entry and the full collections that pause
    the request path. Several holders share a set, made when the second arrives and dropped
    when one is left.
    """

    def __init__(self, default_capacity: int) -> None:
        self.default_capacity = default_capacity
        self._holders: dict[int, str | set[str]] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        self._set_bytes = 0  # what the holder sets of shared hashes hold now

    def __len__(self) -> int:
        # list(): the metrics endpoint reads this from another thread while the loop adds.
        return sum(len(lru) for lru in list(self._lru.values()))

    @property
    def memory_bytes(self) -> int:
        lrus = list(self._lru.values())
        return (
            _sizeof(self._holders)
            + len(self._holders) * _HASH_BYTES
            + self._set_bytes
            + sum(_sizeof(lru) for lru in lrus)
            + _sizeof(self._lru)
            + _sizeof(self._capacity)
        )

    def match(self, hashes: list[int]) -> dict[str, int]:
        """Per endpoint, how many leading blocks of `hashes` it holds (consecutively from block 0)."""
        holders = self._holders
        counts: dict[str, int] = {}
        if not hashes:
            return counts
        pods = holders.get(hashes[0])
        if pods is None:
            return counts
        if isinstance(pods, str):
            # One holder: the common case, walked without building sets.
            n = 1
            for h in hashes[1:]:
                other = holders.get(h)
                if other is None or (other != pods if isinstance(other, str) else pods not in other):
                    break
                n += 1
            counts[pods] = n
            return counts
        alive = set(pods)
        for i, h in enumerate(hashes):
            if i:
                pods = holders.get(h)
                if pods is None:
                    break
                if isinstance(pods, str):
                    if pods not in alive:
                        break
                    alive = {pods}
                else:
                    alive &= pods
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
        move = lru.move_to_end
        for h in hashes:
            if h in lru:
                move(h)
                continue
            lru[h] = None
            # One probe of the big table: a hash new to this endpoint is either unheld (now
            # ours) or held by others (never by us: the LRU is the truth of what we hold).
            pods = holders.setdefault(h, endpoint)
            if pods is endpoint:
                continue
            if isinstance(pods, str):
                shared = holders[h] = {pods, endpoint}
                self._set_bytes += _sizeof(shared)
            else:
                before = _sizeof(pods)
                pods.add(endpoint)
                self._set_bytes += _sizeof(pods) - before
        if len(lru) > cap:
            popitem = lru.popitem
            pop = holders.pop
            while len(lru) > cap:
                old = popitem(last=False)[0]
                gone = pop(old, None)
                if gone is not None and gone != endpoint:
                    # Shared (or, never expected, someone else's): put back what is left.
                    holders[old] = gone
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
        holders = self._holders
        pods = holders.get(h)
        if pods is None:
            return
        if isinstance(pods, str):
            if pods == endpoint:
                del holders[h]
            return
        before = _sizeof(pods)
        pods.discard(endpoint)
        if len(pods) == 1:
            holders[h] = next(iter(pods))
            self._set_bytes -= before
        elif not pods:
            del holders[h]
            self._set_bytes -= before
        else:
            self._set_bytes -= before - _sizeof(pods)

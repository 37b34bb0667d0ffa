"""A bounded LRU of token ids, counted in tokens (what it costs).

Ids are kept as `array('I')`, 4 bytes a token: a Python list of them costs 36 (an int
object and a pointer), which would make a 4-million-token cache 150 MB instead of 16.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence

TOKEN_TYPECODE = "I" if array("I").itemsize == 4 else "L"


def packed(ids: Sequence[int]) -> Sequence[int]:
    """ids as a compact array when they fit in u32 (any real vocabulary does)."""
    if isinstance(ids, array):
        return ids
    try:
        return array(TOKEN_TYPECODE, ids)
    except (OverflowError, TypeError):
        return list(ids)


class TokenCache:
    def __init__(self, max_tokens: int = 4_000_000) -> None:
        self.max_tokens = max_tokens
        self._d: OrderedDict[object, Sequence[int]] = OrderedDict()
        self.tokens = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: object) -> Sequence[int] | None:
        v = self._d.get(key)
        if v is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return v

    def put(self, key: object, ids: Sequence[int]) -> Sequence[int]:
        """Store ids; returns the stored (packed) form, which callers should use from then on."""
        ids = packed(ids)
        if len(ids) > self.max_tokens:
            return ids
        old = self._d.pop(key, None)
        if old is not None:
            self.tokens -= len(old)
        self._d[key] = ids
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            _k, v = self._d.popitem(last=False)
            self.tokens -= len(v)
        return ids

    def __len__(self) -> int:
        return len(self._d)

"""A bounded LRU of token ids, counted in tokens (what it costs), thread-safe enough for one loop."""

from __future__ import annotations

from collections import OrderedDict


class TokenCache:
    def __init__(self, max_tokens: int = 4_000_000) -> None:
        self.max_tokens = max_tokens
        self._d: OrderedDict[object, list[int]] = OrderedDict()
        self.tokens = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: object) -> list[int] | None:
        v = self._d.get(key)
        if v is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return v

    def put(self, key: object, ids: list[int]) -> None:
        if len(ids) > self.max_tokens:
            return
        old = self._d.pop(key, None)
        if old is not None:
            self.tokens -= len(old)
        self._d[key] = ids
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            _k, v = self._d.popitem(last=False)
            self.tokens -= len(v)

    def __len__(self) -> int:
        return len(self._d)

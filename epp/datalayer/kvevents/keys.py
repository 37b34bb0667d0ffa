"""The EPP's own block keys: a chain hash over token chunks, independent of the engine's.

key(block i) = xxh3_64(key(block i-1) ‖ its tokens as u32 ‖ its extra keys), rooted at the
model (or LoRA adapter) name. Both sides compute it from the same tokens: the ingester from
a BlockStored's `token_ids`, the request path from the request's tokens. So vLLM's hash
algorithm, its seed (random per process unless PYTHONHASHSEED is set) and the replicas'
differing seeds do not matter; engine hashes serve only to find a stored block's parent and
to name the blocks a BlockRemoved evicts.

Extra keys: the LoRA name is in the root, not per block; `cache_salt` is block 0's extra (as
vLLM puts it in block 0's extra_keys); any other per-block extra a server publishes
(multimodal identifiers) is folded in as it comes, so a request that cannot reproduce it
never matches it (the safe direction).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

_digest = xxhash.xxh3_64_intdigest
_U32 = "I" if array("I").itemsize == 4 else "L"


def root_key(model: str, seed: str = "") -> int:
    return _digest(f"{seed}\x00{model}".encode("utf-8", "surrogatepass"))


def _extra_bytes(extra: Iterable[Any]) -> bytes:
    return "\x1f".join(repr(e) if not isinstance(e, str) else e for e in extra).encode("utf-8", "surrogatepass")


def chain_keys(
    parent: int,
    tokens: Sequence[int],
    block_size: int,
    first_extra: tuple[Any, ...] = (),
    extras: list[tuple[Any, ...]] | None = None,
    max_blocks: int = 0,
) -> list[int]:
    """Keys of the full blocks of `tokens`, chained from `parent` (a root or a block key).
    `first_extra` is folded into the first block (cache_salt when the run starts at block 0);
    `extras[i]` into block i. A trailing partial block yields nothing (engines cache full
    blocks only)."""
    n = len(tokens) // block_size
    if max_blocks > 0:
        n = min(n, max_blocks)
    if n <= 0:
        return []
    head = tokens[: n * block_size]
    try:
        packed = head.tobytes() if isinstance(head, array) and head.typecode == _U32 else array(_U32, head).tobytes()
    except OverflowError:
        # No real vocabulary has ids outside u32; fold them rather than fail the request or the stream.
        packed = array(_U32, [t & 0xFFFFFFFF for t in head]).tobytes()
    step = 4 * block_size
    out: list[int] = []
    prev = parent
    for i in range(n):
        ex = first_extra if i == 0 else ()
        if extras is not None and i < len(extras) and extras[i]:
            ex = tuple(ex) + tuple(extras[i])
        prev = block_key(prev, packed[i * step : (i + 1) * step], ex)
        out.append(prev)
    return out


def pack_tokens(tokens: Sequence[int]) -> bytes:
    """Token ids as little-endian u32, the bytes keys are hashed over."""
    try:
        return array(_U32, tokens).tobytes()
    except OverflowError:
        return array(_U32, [t & 0xFFFFFFFF for t in tokens]).tobytes()


def block_key(parent: int, packed: bytes, extra: tuple[Any, ...] = ()) -> int:
    """One block's key: its parent's key, its tokens (packed u32) and its extra keys."""
    data = parent.to_bytes(8, "little") + packed
    if extra:
        data += b"\x1e" + _extra_bytes(extra)
    return _digest(data)


def request_keys(
    model: str, tokens: Sequence[int], block_size: int, cache_salt: str = "", seed: str = "", max_blocks: int = 0
) -> list[int]:
    """The keys a request's prompt would have if it were cached."""
    return chain_keys(
        root_key(model, seed), tokens, block_size, (cache_salt,) if cache_salt else (), max_blocks=max_blocks
    )

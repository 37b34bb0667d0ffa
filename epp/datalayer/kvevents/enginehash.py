"""vLLM's own prefix block hashes, for the precise index's exact-engine-hash mode.

Only for operators who pin vLLM's `--prefix-caching-hash-algo` to `sha256_cbor` or
`xxhash_cbor` and its `PYTHONHASHSEED` (the pickle-based algorithms are not reproducible
outside the process, and without a seed vLLM roots every chain in 32 random bytes). Then a
request's block hashes are the ones the engine publishes, and a BlockStored is indexed by its
hashes alone: no parent lookup, so events whose parent this EPP never saw still count.

vLLM (v1/core/kv_cache_utils.py): block i's hash is hash_fn((parent digest, tuple(tokens),
extra keys or None)) over cbor2.dumps(canonical=True), the parent of block 0 being NONE_HASH =
hash_fn(str(PYTHONHASHSEED)); extra keys are the LoRA name, then `cache_salt` on block 0 only.
Events carry the digest's last 8 bytes read big-endian (or the digest, folded the same way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
import xxhash

ALGORITHMS = ("sha256_cbor", "xxhash_cbor")


def _sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def _xxhash_cbor(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))


_HASH: dict[str, Callable[[Any], bytes]] = {"sha256_cbor": _sha256_cbor, "xxhash_cbor": _xxhash_cbor}


def hash_function(algorithm: str) -> Callable[[Any], bytes]:
    try:
        return _HASH[algorithm]
    except KeyError:
        raise ValueError(f"engine hash algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}") from None


def none_hash(algorithm: str, seed: str) -> bytes:
    """The parent of every chain's first block, as vLLM derives it from PYTHONHASHSEED."""
    return hash_function(algorithm)(seed)


def fold(digest: bytes) -> int:
    """What an event carries: the digest's last 8 bytes, big-endian (vLLM's int block hashes)."""
    return int.from_bytes(digest[-8:], "big")


def engine_block_hashes(
    tokens: Sequence[int],
    block_size: int,
    algorithm: str,
    seed: str,
    lora_name: str = "",
    cache_salt: str = "",
    max_blocks: int = 0,
) -> list[int]:
    """The folded hashes vLLM gives the full blocks of `tokens`."""
    fn = hash_function(algorithm)
    n = len(tokens) // block_size
    if max_blocks > 0:
        n = min(n, max_blocks)
    parent = none_hash(algorithm, seed)
    out: list[int] = []
    for i in range(n):
        extra: list[Any] = [lora_name] if lora_name else []
        if i == 0 and cache_salt:
            extra.append(cache_salt)
        block = tuple(tokens[i * block_size : (i + 1) * block_size])
        parent = fn((parent, block, tuple(extra) if extra else None))
        out.append(fold(parent))
    return out

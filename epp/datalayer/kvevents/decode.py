"""vLLM / SGLang KV-event payloads -> typed events.

Every published shape is accepted (../docs/routing.md, "KV events"):

* the batch as a positional array `[ts, events, dp_rank?]` or as a map `{"ts", "events", ...}`;
* each event as a positional array `[tag, f1, f2, ...]` (vLLM before #42892, SGLang before
  #37482) with trailing defaults omitted, or as a map with the tag under `"type"`;
* block hashes as unsigned or signed 64-bit ints or as raw digest bytes, all folded to the
  same u64 (the last 8 bytes read big-endian, which is what vLLM's int mode publishes), so
  both of vLLM's hash modes name a block the same way.

Unknown tags and extra fields are ignored; a malformed event raises DecodeError, which the
ingester counts and skips (one bad event never takes the stream down).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

U64 = (1 << 64) - 1
TIERS = ("gpu", "cpu")  # media are lower-cased; anything that is not CPU-side counts as GPU
_CPU_MEDIA = {"cpu", "cpu_offload", "shared_storage", "disk"}

# Positional field order per event, as vLLM appended them (kvevents.md §1).
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


class DecodeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Stored:
    hashes: tuple[int, ...]
    parent: int | None
    token_ids: tuple[int, ...] | list[int]
    block_size: int
    lora_name: str | None = None
    tier: str = "gpu"
    extra_keys: tuple[Any, ...] | None = None


@dataclass(frozen=True, slots=True)
class Removed:
    hashes: tuple[int, ...]
    tier: str = "gpu"


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


def fold_hash(h: Any) -> int:
    """Any engine hash form -> u64. Negative ints are two's-complement i64 (SGLang)."""
    if isinstance(h, bool):
        raise DecodeError("block hash is a bool")
    if isinstance(h, int):
        return h & U64
    if isinstance(h, (bytes, bytearray, memoryview)):
        b = bytes(h)
        if not b:
            raise DecodeError("empty block hash")
        return int.from_bytes(b[-8:], "big")
    raise DecodeError(f"block hash of type {type(h).__name__}")


def _tier(medium: Any) -> str:
    if medium is None:
        return "gpu"
    if not isinstance(medium, str):
        raise DecodeError("medium is not a string")
    return "cpu" if medium.lower() in _CPU_MEDIA else "gpu"


def _fields(ev: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(ev, dict):
        return ev
    return dict(zip(names, ev[1:], strict=False))


def _hashes(v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise DecodeError("block_hashes is not a list")
    return tuple(fold_hash(h) for h in v)


def decode_event(ev: Any) -> Event | None:
    """One event (array or map) -> Stored / Removed / Cleared; None for unknown tags."""
    if isinstance(ev, dict):
        tag = ev.get("type")
    elif isinstance(ev, (list, tuple)) and ev:
        tag = ev[0]
    else:
        raise DecodeError("event is neither an array nor a map")
    if tag == "BlockStored":
        f = _fields(ev, _STORED_FIELDS)
        hashes = _hashes(f.get("block_hashes"))
        parent = f.get("parent_block_hash")
        tokens = f.get("token_ids") or []
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, int) for t in tokens):
            raise DecodeError("token_ids is not a list of ints")
        bs = f.get("block_size")
        if not isinstance(bs, int) or bs <= 0:
            raise DecodeError("block_size is not a positive int")
        if tokens and len(tokens) != bs * len(hashes):
            raise DecodeError(f"{len(tokens)} token_ids for {len(hashes)} blocks of {bs}")
        lora = f.get("lora_name")
        extra = f.get("extra_keys")
        return Stored(
            hashes,
            None if parent is None else fold_hash(parent),
            tokens,
            bs,
            lora if isinstance(lora, str) and lora else None,
            _tier(f.get("medium")),
            tuple(extra) if isinstance(extra, (list, tuple)) else None,
        )
    if tag == "BlockRemoved":
        f = _fields(ev, _REMOVED_FIELDS)
        return Removed(_hashes(f.get("block_hashes")), _tier(f.get("medium")))
    if tag == "AllBlocksCleared":
        return Cleared()
    return None


def decode_batch(payload: bytes) -> list[Event]:
    """One msgpack EventBatch -> its events in order. Raises DecodeError for a bad batch;
    events with unknown tags are left out."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise DecodeError(f"not msgpack: {exc}") from None
    if isinstance(obj, dict):
        evs = obj.get("events")
    elif isinstance(obj, (list, tuple)) and len(obj) >= 2:
        evs = obj[1]
    else:
        raise DecodeError("batch is neither [ts, events, ...] nor a map")
    if not isinstance(evs, (list, tuple)):
        raise DecodeError("batch events is not a list")
    out: list[Event] = []
    for ev in evs:
        e = decode_event(ev)
        if e is not None:
            out.append(e)
    return out

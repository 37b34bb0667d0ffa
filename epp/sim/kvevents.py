"""vLLM KV-cache events over ZMQ PUB, in vLLM's wire format.

Wire format (vllm/distributed/kv_events.py, ZmqEventPublisher): every engine step with
events sends one 3-frame multipart message

    [topic bytes, sequence number (8-byte big-endian, from 0), msgpack(KVEventBatch)]

KVEventBatch and the events are msgspec structs. Two encodings exist in the wild:

* "array" (vLLM <= 0.11, and what llm-d's kv-cache indexer decodes; default here):
  batch = [ts, [event, ...]]
  BlockStored      = ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]
  BlockRemoved     = ["BlockRemoved", block_hashes, medium]
  AllBlocksCleared = ["AllBlocksCleared"]
* "map" (newer vLLM, structs without array_like):
  batch = {"ts": ts, "events": [...], "data_parallel_rank": 0}
  BlockStored = {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": ...,
                 "token_ids": [...], "block_size": 16, "lora_id": ..., "medium": "GPU",
                 "lora_name": ...}; BlockRemoved = {"type": "BlockRemoved", "block_hashes": [...],
                 "medium": "GPU"}; AllBlocksCleared = {"type": "AllBlocksCleared"}

Block hashes are unsigned 64-bit ints (xxh3 chained over parent hash, the block's token
ids and the adapter name; see kvcache.block_hashes); `ts` is wall-clock epoch seconds.
Topic: vLLM's default is the empty string; llm-d's indexer expects
"kv@<pod-ip>@<model>" (llm-d-inference-sim uses "kv@<ip>:<port>@<model>"). The topic is a
template with {host}, {port}, {pod} and {model}; the default is "kv@{host}:{port}@{model}".
Endpoint: a PUB socket that binds (each replica at endpoint port + replica index, like
vLLM's data-parallel ranks), or with connect=True every replica connects to the same
endpoint where a subscriber has bound (the llm-d indexer layout).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Any

import msgpack
import zmq

from epp.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

MEDIUM_GPU = "GPU"
FORMATS = ("array", "map")


def offset_endpoint(endpoint: str, index: int) -> str:
    """tcp://host:PORT -> tcp://host:PORT+index (vLLM's offset_endpoint_port)."""
    if index == 0 or not endpoint.startswith("tcp://"):
        return endpoint
    base, _, port = endpoint.rpartition(":")
    return f"{base}:{int(port) + index}"


def encode_event(ev: KVEvent, fmt: str = "array") -> Any:
    if isinstance(ev, BlockStored):
        if fmt == "array":
            # vLLM appended lora_name after medium (#27577); trailing defaults are omitted.
            base = [
                "BlockStored",
                ev.block_hashes,
                ev.parent_block_hash,
                ev.token_ids,
                ev.block_size,
                ev.lora_id,
                MEDIUM_GPU,
            ]
            return [*base, ev.lora_name] if ev.lora_name else base
        return {
            "type": "BlockStored",
            "block_hashes": ev.block_hashes,
            "parent_block_hash": ev.parent_block_hash,
            "token_ids": ev.token_ids,
            "block_size": ev.block_size,
            "lora_id": ev.lora_id,
            "medium": MEDIUM_GPU,
            "lora_name": ev.lora_name,
        }
    if isinstance(ev, BlockRemoved):
        if fmt == "array":
            return ["BlockRemoved", ev.block_hashes, MEDIUM_GPU]
        return {"type": "BlockRemoved", "block_hashes": ev.block_hashes, "medium": MEDIUM_GPU}
    if isinstance(ev, AllBlocksCleared):
        return ["AllBlocksCleared"] if fmt == "array" else {"type": "AllBlocksCleared"}
    raise TypeError(f"not a KV event: {ev!r}")


def encode_batch(events: list[KVEvent], ts: float, fmt: str = "array") -> bytes:
    evs = [encode_event(e, fmt) for e in events]
    batch: Any = [ts, evs] if fmt == "array" else {"ts": ts, "events": evs, "data_parallel_rank": 0}
    return msgpack.packb(batch, use_bin_type=True)


def decode_batch(payload: bytes) -> tuple[float, list[dict[str, Any]]]:
    """Either encoding -> (ts, [{"type": ..., field: value}]). For tests and tools."""
    obj = msgpack.unpackb(payload, raw=False)
    if isinstance(obj, dict):
        return obj["ts"], obj["events"]
    ts, evs = obj[0], obj[1]
    out: list[dict[str, Any]] = []
    for e in evs:
        tag = e[0]
        if tag == "BlockStored":
            keys = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name")
        elif tag == "BlockRemoved":
            keys = ("block_hashes", "medium")
        else:
            keys = ()
        d = {"type": tag}
        d.update(zip(keys, e[1:], strict=False))
        out.append(d)
    return ts, out


END_OF_REPLAY = (1 << 64) - 1


class KVEventPublisher:
    """Non-blocking: a PUB socket drops at its high-water mark instead of stalling the
    event loop, which is what a slow subscriber would see from vLLM too.

    With `replay_endpoint`, a ROUTER socket answers [b"", start seq] with every buffered batch
    numbered >= start, then an end marker (seq 2^64-1, empty payload), as vLLM does; the last
    `buffer_steps` batches are kept. `replay_topic` picks the framing: with the topic (vLLM
    >= 0.26) or without."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        fmt: str = "array",
        connect: bool = False,
        hwm: int = 100_000,
        replay_endpoint: str | None = None,
        buffer_steps: int = 10_000,
        replay_topic: bool = True,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"kv events format must be one of {FORMATS}")
        self.endpoint = endpoint
        self.topic = topic.encode()
        self.fmt = fmt
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.set_hwm(hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if connect:
            self._sock.connect(endpoint)
        else:
            self._sock.bind(endpoint)
        self._seq = 0
        # Fault injection: the next N batches are numbered and kept for replay but never sent,
        # which is what a subscriber sees when the PUB socket is at its high-water mark.
        self.drop_next = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, buffer_steps))
        self._replay_topic = replay_topic
        self._router: zmq.Socket | None = None
        if replay_endpoint:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            try:
                self._router.bind(replay_endpoint)
            except zmq.ZMQError:
                self._router.close(linger=0)
                self._sock.close(linger=0)
                raise

    @property
    def replay_fd(self) -> int | None:
        """Readable when a replay request may be waiting (for the owner's event loop)."""
        return self._router.getsockopt(zmq.FD) if self._router is not None else None

    def serve_replays(self) -> int:
        """Answer every replay request waiting on the ROUTER socket; returns how many."""
        r = self._router
        if r is None:
            return 0
        served = 0
        while r.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = r.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 3 or frames[1] != b"" or len(frames[2]) != 8:
                continue  # vLLM ignores anything else
            ident, start = frames[0], int.from_bytes(frames[2], "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    self._reply(ident, seq.to_bytes(8, "big"), payload)
            self._reply(ident, END_OF_REPLAY.to_bytes(8, "big"), b"")
            served += 1
        return served

    def _reply(self, ident: bytes, seq: bytes, payload: bytes) -> None:
        assert self._router is not None
        frames = [ident, b"", self.topic, seq, payload] if self._replay_topic else [ident, b"", seq, payload]
        with contextlib.suppress(zmq.Again):
            self._router.send_multipart(frames, flags=zmq.NOBLOCK)

    def publish(self, events: list[KVEvent], ts: float | None = None) -> None:
        if not events:
            return
        payload = encode_batch(events, time.time() if ts is None else ts, self.fmt)
        self._buffer.append((self._seq, payload))
        if self.drop_next > 0:
            self.drop_next -= 1
            self._seq += 1
            return
        with contextlib.suppress(zmq.Again):
            self._sock.send_multipart((self.topic, self._seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)
        self._seq += 1

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._router is not None:
            self._router.close(linger=0)

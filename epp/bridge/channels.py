"""One pooled gRPC channel per EPP `host:port` (NGF's shim dials a new connection per request).

Modes: TLS without verification (default, like every gateway in front of an EPP with a
self-signed certificate), TLS verified against a CA file, or plaintext.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

import grpc

from epp.bridge.tunnel import TlsTunnel


class TlsMode(str, Enum):
    INSECURE = "insecure"  # TLS, no verification
    VERIFY = "verify"  # TLS, verified against --ca-file
    PLAINTEXT = "plaintext"


# Messages are <= 62,000 bytes each way, but an EPP may echo a large body in bigger frames.
_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # A restarted EPP is back within a second or so; the default 1 s..120 s backoff would turn
    # that into minutes of 502s. (Not grpc.min_reconnect_backoff_ms: it is also the connect
    # timeout, and a TLS handshake on a busy loop can take longer than a small value.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 0),
]


@dataclass
class _Entry:
    channel: grpc.aio.Channel
    tunnel: TlsTunnel | None


class ChannelPool:
    """Channels keyed by (host, port), created on first use, least recently used closed past `limit`."""

    def __init__(self, mode: TlsMode = TlsMode.INSECURE, ca_file: str = "", limit: int = 64) -> None:
        self.mode = mode
        self.limit = limit
        self._root = b""
        if mode is TlsMode.VERIFY:
            with open(ca_file, "rb") as f:
                self._root = f.read()
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, host: str, port: int) -> grpc.aio.Channel:
        key = (host, port)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry.channel
        async with self._lock:  # two first requests to one EPP must not build two tunnels
            entry = self._entries.get(key)
            if entry is None:
                entry = await self._open(host, port)
                self._entries[key] = entry
                while len(self._entries) > self.limit:
                    _, old = self._entries.popitem(last=False)
                    await _close(old)
            return entry.channel

    async def _open(self, host: str, port: int) -> _Entry:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.mode is TlsMode.PLAINTEXT:
            return _Entry(grpc.aio.insecure_channel(target, options=_OPTIONS), None)
        if self.mode is TlsMode.VERIFY:
            creds = grpc.ssl_channel_credentials(root_certificates=self._root)
            return _Entry(grpc.aio.secure_channel(target, creds, options=_OPTIONS), None)
        tunnel = TlsTunnel(host, port)
        await tunnel.start()
        # The authority the EPP sees stays the EPP's address, not the socket name.
        options = [*_OPTIONS, ("grpc.default_authority", target)]
        return _Entry(grpc.aio.insecure_channel(tunnel.target, options=options), tunnel)

    async def close(self) -> None:
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            await _close(entry)


async def _close(entry: _Entry) -> None:
    await entry.channel.close()
    if entry.tunnel is not None:
        await entry.tunnel.close()

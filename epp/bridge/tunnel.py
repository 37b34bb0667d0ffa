"""TLS to an EPP without certificate verification, for grpc-python, which cannot skip it.

grpc-python always checks the server name against the certificate, and the EPPs' self-signed
certificates (ours and the reference's) carry no CN or SAN, so even pinning the fetched
certificate as a root fails ("Hostname Verification Check failed"). Instead the gRPC channel
speaks plaintext HTTP/2 to an abstract Unix socket served here, and every connection accepted
on it is relayed over a Python TLS connection (verification off, ALPN h2) to the EPP. The gRPC
channel keeps one long-lived connection, so the relay costs two memory copies per message,
not a handshake per request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import ssl

log = logging.getLogger("epp.bridge.tunnel")

_ids = itertools.count()


def insecure_client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])  # gRPC servers refuse TLS without ALPN h2
    return ctx


class _Relay(asyncio.Protocol):
    """One side of a relayed connection: writes what it receives to its peer, with back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.pending: list[bytes] = []  # data that arrived before the peer connected
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            return True
        self._close_peer()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._close_peer()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _close_peer(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def attach(self, peer: _Relay) -> None:
        self.peer = peer
        if self.pending and peer.transport is not None:
            for chunk in self.pending:
                peer.transport.write(chunk)
            self.pending = []


class TlsTunnel:
    """Plaintext abstract Unix socket -> TLS (no verification) to `host:port`."""

    def __init__(self, host: str, port: int, connect_timeout: float = 2.0) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.name = f"epp-bridge-{os.getpid()}-{next(_ids)}"
        self._server: asyncio.AbstractServer | None = None
        self._ssl = insecure_client_context()
        self._tasks: set[asyncio.Task] = set()
        self._relays: set[_Relay] = set()

    @property
    def target(self) -> str:
        """The gRPC target for the channel."""
        return f"unix-abstract:{self.name}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("\0" + self.name)  # abstract namespace: nothing on disk to clean up
        self._server = await loop.create_unix_server(self._accepted, sock=sock)

    def _accepted(self) -> _Relay:
        local = _Relay()
        self._relays = {r for r in self._relays if not r.closed}
        self._relays.add(local)
        task = asyncio.get_running_loop().create_task(self._connect(local))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return local

    async def _connect(self, local: _Relay) -> None:
        loop = asyncio.get_running_loop()
        remote = _Relay()
        remote.peer = local  # before connecting: the EPP's SETTINGS can arrive with the handshake
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: remote, self.host, self.port, ssl=self._ssl, server_hostname=self.host),
                self.connect_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            # Closing the local side makes gRPC see the EPP as unavailable (-> 502), then retry later.
            log.debug("cannot reach EPP %s:%d over TLS: %s", self.host, self.port, exc)
            if local.transport is not None:
                local.transport.close()
            return
        if local.closed:
            if remote.transport is not None:
                remote.transport.close()
            return
        local.attach(remote)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for relay in self._relays:
            if relay.transport is not None:
                relay.transport.close()  # also closes its TLS peer (connection_lost)
        self._relays.clear()

"""Runs the gRPC app on h2corn (a Rust HTTP/2 server) on a socket the EPP binds itself.

Binding the socket here keeps the EPP's own bind checks and error messages, and lets a new
server generation take over the same listening socket: that is how a rotated certificate
is taken (h2corn reads its TLS material once per generation). The new generation accepts
new connections at once; the old one stops accepting, tells its connections to go away
(GOAWAY) and lets their streams finish, so a rotation drops nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h2corn
import h2corn._lib
from h2corn import Config, Server

from epp.extproc import tls
from epp.extproc.asgi import GrpcApp

log = logging.getLogger("epp.extproc")

# h2corn prints a banner to stderr for every generation ("Listening on http://..."); the EPP
# logs its own start-up line, and a banner at every certificate rotation would be noise.
# Pinned version (pyproject): the patched name is checked by tests/unit/extproc/test_h2server.py.
h2corn._lib.emit_banner = lambda config, prepared: None  # type: ignore[assignment]

# Envoy keeps ext_proc connections open between requests; idle timeouts would only race new
# streams against GOAWAY. Per-connection streams are capped by MAX_CONCURRENT_STREAMS (Envoy
# opens another connection when one is full), connections per process by MAX_CONNECTIONS.
MAX_CONCURRENT_STREAMS = 256
MAX_CONNECTIONS = 4096
CERT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path
    keyfile: Path
    private: bool = False  # written by private_files(): removed once h2corn has read it


def listening_socket(host: str, port: int, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def private_files(pair: tls.KeyPair) -> TlsFiles:
    """`pair` written to a private directory, because h2corn reads PEM files: the self-signed
    certificate of a run without --cert-path, or a validated rotation (h2corn then reads
    exactly the bytes that were checked, not whatever the volume holds a moment later)."""
    d = Path(tempfile.mkdtemp(prefix="epp-tls-"))
    os.chmod(d, 0o700)
    (d / "tls.crt").write_bytes(pair.cert_pem)
    key = d / "tls.key"
    key.touch(0o600)
    key.write_bytes(pair.key_pem)
    return TlsFiles(d / "tls.crt", key, private=True)


class H2Server:
    def __init__(
        self,
        app: GrpcApp,
        sock: socket.socket,
        tls_files: TlsFiles | None = None,
        cert_watch: tls.ReloadingCertificates | None = None,
        drain_budget: float = 60.0,
    ) -> None:
        self.app = app
        self.sock = sock
        self.tls_files = tls_files
        self.cert_watch = cert_watch
        self.drain_budget = drain_budget
        self.port = sock.getsockname()[1]
        self._current: tuple[Server, asyncio.Task] | None = None
        self._retiring: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None

    def _config(self) -> Config:
        kw: dict[str, Any] = {}
        if self.tls_files is not None:
            kw = {"certfile": self.tls_files.certfile, "keyfile": self.tls_files.keyfile}
        return Config(
            bind=(f"fd://{self.sock.fileno()}",),
            grpc=True,
            http1=False,
            lifespan="off",
            access_log=False,
            max_concurrent_streams=MAX_CONCURRENT_STREAMS,
            limit_connections=MAX_CONNECTIONS,
            timeout_keep_alive=0,
            timeout_graceful_shutdown=self.drain_budget,
            # One tokio thread: the Python loop is the bottleneck either way, and a second I/O
            # thread only adds wake-ups between threads (measured on 2 cores, alternated: 30 vs
            # 35 us per streamed chunk at 256 streams, 45 vs 55 at 64, 2,570-2,640 vs
            # 2,390-2,430 1 KB requests/s at 32 connections). More cores: --workers.
            runtime_threads=1,
            **kw,
        )

    async def _generation(self) -> tuple[Server, asyncio.Task]:
        # GrpcApp is a plain ASGI callable (dict scopes); h2corn's stub wants its TypedDict scopes.
        server = Server(self.app, self._config())  # type: ignore[arg-type]
        task = asyncio.create_task(server.serve(), name=f"h2corn:{self.port}")
        try:
            await server.wait_started()
        except BaseException:
            task.cancel()
            raise
        finally:
            if self.tls_files is not None and self.tls_files.private:  # read once per generation
                shutil.rmtree(self.tls_files.certfile.parent, ignore_errors=True)
        return server, task

    async def start(self) -> None:
        self._current = await self._generation()
        if self.cert_watch is not None:
            self._watcher = asyncio.create_task(self._watch_certificates())

    async def _watch_certificates(self) -> None:
        assert self.cert_watch is not None
        while True:
            await asyncio.sleep(CERT_POLL_SECONDS)
            if await asyncio.to_thread(self.cert_watch.fetch) is None:
                continue
            try:
                self.tls_files = private_files(self.cert_watch.current)
                await self.rotate()
            except Exception:
                log.exception("could not start serving the reloaded certificate; the previous one stays")

    async def rotate(self) -> None:
        """A new generation on the same socket, then the old one drains away."""
        new = await self._generation()
        old, self._current = self._current, new
        if old is not None:
            old[0].shutdown()
            self._retiring.add(old[1])
            old[1].add_done_callback(self._retiring.discard)

    async def stop(self, grace: float) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        tasks = list(self._retiring)
        if self._current is not None:
            self._current[0].shutdown()
            tasks.append(self._current[1])
            self._current = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.app.active_streams and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.app.cut()  # streams still open at the deadline end now, releasing their load
        await asyncio.gather(*tasks, return_exceptions=True)
        self.sock.close()

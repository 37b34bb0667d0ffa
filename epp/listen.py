"""Listening addresses: how they are written and why binding one failed, for one-line start-up errors."""

from __future__ import annotations

import socket


class BindError(OSError):
    """A port that cannot be listened on; the message names the address, its flag and the reason."""


def host_port(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def why_unbindable(addr: str, port: int) -> str | None:
    """Why `addr:port` cannot be listened on, or None if it can (as far as a plain socket can tell).

    Asked before grpc binds, because grpc reports a failure only as "failed to bind" plus a
    multi-line C-core log, and after it, to explain one.
    """
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no reason
        probe.bind((addr, port))
        return None
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    finally:
        probe.close()


def bind_failure(addr: str, port: int, flag: str, reason: str | None = None) -> BindError:
    reason = reason or why_unbindable(addr, port) or "refused by the server library"
    return BindError(f"cannot listen on {host_port(addr, port)} ({flag}): {reason}")

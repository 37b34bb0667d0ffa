"""gRPC over HTTP/2, the parts a server writes itself when its HTTP/2 server is not a gRPC one.

Per https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md: each message is a 1-byte
compressed flag, a 4-byte big-endian length and the bytes; the call's status goes in the
trailers (`grpc-status`, `grpc-message` percent-encoded); `grpc-timeout` is a deadline of up
to 8 digits and a unit.
"""

from __future__ import annotations

from enum import IntEnum
from urllib.parse import quote


class Status(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class FramingError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a `grpc-timeout` value; None when malformed (the call then has no deadline)."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def frames(messages: list[bytes]) -> bytes:
    if len(messages) == 1:
        return frame(messages[0])
    return b"".join(frame(m) for m in messages)


class MessageReader:
    """Splits the request's DATA chunks into gRPC messages (a message may span chunks, a chunk
    may hold several messages)."""

    __slots__ = ("_pending", "max_message")

    def __init__(self, max_message: int) -> None:
        self._pending = b""
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._pending + data if self._pending else data
        out: list[bytes] = []
        i, n = 0, len(buf)
        while n - i >= 5:
            if buf[i] != 0:
                raise FramingError(
                    Status.UNIMPLEMENTED, "compressed messages are not accepted (no grpc-encoding was offered)"
                )
            size = int.from_bytes(buf[i + 1 : i + 5], "big")
            if size > self.max_message:
                raise FramingError(
                    Status.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds the {self.max_message}-byte limit"
                )
            end = i + 5 + size
            if end > n:
                break
            out.append(buf[i + 5 : end])
            i = end
        self._pending = buf[i:] if i < n else b""
        return out

    @property
    def partial(self) -> bool:
        """A message has begun but not ended (the client half-closed mid-message)."""
        return bool(self._pending)


def trailers(status: Status, message: str = "") -> list[tuple[bytes, bytes]]:
    out = [(b"grpc-status", str(int(status)).encode())]
    if message:
        out.append((b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()))
    return out

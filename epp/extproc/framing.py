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
    may hold several messages).

    A message spanning many chunks (a large body chunk arrives in 16 KB DATA frames) is kept as
    a list of pieces and joined once it is complete: concatenating on every chunk would copy
    it over and over (quadratic in its size), which held the event loop for tens of ms per
    megabyte (the big-response stage of bench/results/reliability.md)."""

    __slots__ = ("_have", "_need", "_pieces", "max_message")

    def __init__(self, max_message: int) -> None:
        self._pieces: list[bytes] = []
        self._have = 0  # bytes in _pieces
        self._need = 0  # bytes the message begun in _pieces needs, header included (0: unknown yet)
        self.max_message = max_message

    def feed(self, data: bytes) -> list[bytes]:
        if self._pieces:
            self._pieces.append(data)
            self._have += len(data)
            if self._need == 0 and self._have >= 5:
                head = b"".join(self._pieces)
                self._pieces = [head]
                self._need = 5 + self._size(head, 0)
            if self._need == 0 or self._have < self._need:
                return []
            data = b"".join(self._pieces)
            self._pieces, self._have, self._need = [], 0, 0
        out: list[bytes] = []
        i, n = 0, len(data)
        while n - i >= 5:
            end = i + 5 + self._size(data, i)
            if end > n:
                self._need = end - i
                break
            out.append(data[i + 5 : end])
            i = end
        if i < n:
            rest = data[i:] if i else data
            self._pieces, self._have = [rest], len(rest)
        return out

    def _size(self, buf: bytes, i: int) -> int:
        if buf[i] != 0:
            raise FramingError(
                Status.UNIMPLEMENTED, "compressed messages are not accepted (no grpc-encoding was offered)"
            )
        size = int.from_bytes(buf[i + 1 : i + 5], "big")
        if size > self.max_message:
            raise FramingError(
                Status.RESOURCE_EXHAUSTED, f"message of {size} bytes exceeds the {self.max_message}-byte limit"
            )
        return size

    @property
    def partial(self) -> bool:
        """A message has begun but not ended (the client half-closed mid-message)."""
        return bool(self._pieces)


def trailers(status: Status, message: str = "") -> list[tuple[bytes, bytes]]:
    out = [(b"grpc-status", str(int(status)).encode())]
    if message:
        out.append((b"grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()))
    return out

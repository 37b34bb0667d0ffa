"""Structured logging whose verbosity follows the reference's `-v` (2 = default, 4 = debug)."""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def level_for_verbosity(v: int) -> int:
    if v >= 4:
        return logging.DEBUG
    if v >= 1:
        return logging.INFO
    return logging.WARNING


def configure(verbosity: int, encoder: str = "console") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if encoder == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_for_verbosity(verbosity))
    # Libraries stay quiet unless we are debugging.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 5 else logging.DEBUG)


class RateLimitedLog:
    """At most one record per `interval` seconds; the next one says how many were left out.

    For messages a remote peer can trigger at will (corrupt protobuf, internal errors on crafted
    input): one per stream would let anyone who reaches the port fill the disk and bury real logs.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, clock=time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._next = 0.0

    def log(self, level: int, msg: str, *args, exc_info=None) -> bool:
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg += f" ({self.suppressed} more like this in the previous {self.interval:g}s not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        self._next = now + self.interval
        self.suppressed = 0
        return True

    def warning(self, msg: str, *args) -> bool:
        return self.log(logging.WARNING, msg, *args)

"""Structured logging whose verbosity follows the reference's `-v` (2 = default, 4 = debug)."""

from __future__ import annotations

import logging
import sys

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
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

"""Messages between ext_proc workers and the decision process: msgpack, length-prefixed, over
a Unix socket (one per worker, opened by the worker at start-up).

Worker -> decision process:
    [ROUTE, id, headers, body, subset]               route a request (the answer may wait: holds)
    [HEADERS_ONLY, id, headers]                      route a bodyless request
    [FIRST_BYTE, id]                                 the response began: the prefill is done
    [FINISH, id, completed, status, usage, size]     the exchange ended (exactly once per id)
    [STREAMS, worker, active, last_activity]         open streams, for the SIGTERM drain
Decision process -> worker:
    [DECISION, id, destination, body|None, set_headers, remove_headers, response_headers, incoming, target,
     served_header|None]
    [ERROR, id, code, message]
    [HEALTH, {service: status}]
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

ROUTE, HEADERS_ONLY, FIRST_BYTE, FINISH, STREAMS = 1, 2, 3, 4, 5
DECISION, ERROR, HEALTH = 11, 12, 13

MAX_MESSAGE = 256 << 20  # a request body of up to --max-request-body-bytes travels in one message

_pack = msgpack.Packer(use_bin_type=True).pack


def encode(message: list[Any]) -> bytes:
    data = _pack(message)
    return len(data).to_bytes(4, "big") + data


async def read(reader: asyncio.StreamReader) -> list[Any] | None:
    """The next message, or None at end of stream."""
    try:
        head = await reader.readexactly(4)
        size = int.from_bytes(head, "big")
        if size > MAX_MESSAGE:
            raise ValueError(f"IPC message of {size} bytes")
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)

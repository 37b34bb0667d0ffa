"""Write the client's model name back into responses after a rewrite (byte replace, no re-parse)."""

from __future__ import annotations

import orjson


def restore_model_name(data: bytes, target: str, incoming: str) -> bytes:
    t, i = orjson.dumps(target), orjson.dumps(incoming)
    compact = b'"model":' + t
    if compact in data:
        return data.replace(compact, b'"model":' + i)
    spaced = b'"model": ' + t
    if spaced in data:
        return data.replace(spaced, b'"model": ' + i)
    return data

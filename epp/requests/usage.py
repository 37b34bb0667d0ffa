"""Token usage from model-server responses: SSE `data:` lines or a JSON body."""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


def usage_from_object(obj: object) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "response.completed" and isinstance(obj.get("response"), dict):
        obj = obj["response"]
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    prompt = _int(u.get("prompt_tokens", u.get("input_tokens")))
    completion = _int(u.get("completion_tokens", u.get("output_tokens")))
    details = u.get("prompt_tokens_details") or u.get("prompt_token_details") or u.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    total = _int(u.get("total_tokens")) or prompt + completion
    return Usage(prompt, completion, total, cached)


def usage_from_json_body(body: bytes) -> Usage | None:
    try:
        return usage_from_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


class SseUsageScanner:
    """Feeds SSE chunks as they pass; keeps the first usage object seen.

    Chunks may split lines anywhere, so a partial trailing line is carried over. Only lines that
    mention "usage" are decoded: most token chunks are skipped without a JSON parse.
    """

    __slots__ = ("usage", "_tail")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if self.usage is not None:
            return
        data = self._tail + chunk if self._tail else chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > 1 << 20:  # a runaway line without newline: stop carrying it
            self._tail = b""
        for line in lines:
            if not line.startswith(b"data:") or b'"usage"' not in line:
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                usage = usage_from_object(orjson.loads(payload))
            except orjson.JSONDecodeError:
                continue
            if usage is not None:
                self.usage = usage
                return


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0

"""Token usage from model-server responses: SSE `data:` lines or a JSON body.

OpenAI APIs report `usage` once (the last chunk of a stream, or the body). Anthropic's Messages
API (vLLM's /v1/messages) splits it over a stream: `message_start` carries the input tokens,
the closing `message_delta` the output tokens; its input excludes the cache reads, which it
counts apart (`cache_read_input_tokens`, `cache_creation_input_tokens`).
"""

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
    kind = obj.get("type")
    inner = (
        obj.get("response") if kind == "response.completed" else obj.get("message") if kind == "message_start" else None
    )
    if isinstance(inner, dict):
        obj = inner
    u = obj.get("usage")
    if not isinstance(u, dict):
        return None
    if "prompt_tokens" not in u and ("cache_read_input_tokens" in u or "cache_creation_input_tokens" in u):
        cached = _int(u.get("cache_read_input_tokens"))
        prompt = _int(u.get("input_tokens")) + cached + _int(u.get("cache_creation_input_tokens"))
        completion = _int(u.get("output_tokens"))
        return Usage(prompt, completion, prompt + completion, cached)
    prompt = _int(u.get("prompt_tokens", u.get("input_tokens")))
    completion = _int(u.get("completion_tokens", u.get("output_tokens")))
    details = u.get("prompt_tokens_details") or u.get("prompt_token_details") or u.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    total = _int(u.get("total_tokens")) or prompt + completion
    return Usage(prompt, completion, total, cached)


def _merge_messages_delta(start: Usage, delta: Usage) -> Usage:
    """message_start's input with message_delta's (cumulative) output."""
    prompt = max(start.prompt_tokens, delta.prompt_tokens)
    cached = max(start.cached_tokens, delta.cached_tokens)
    return Usage(prompt, delta.completion_tokens, prompt + delta.completion_tokens, cached)


def usage_from_json_body(body: bytes) -> Usage | None:
    try:
        return usage_from_object(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


class JsonUsageTracker:
    """Usage from a JSON response fed chunk by chunk, in bounded memory.

    A body up to `WHOLE_LIMIT` is kept and parsed whole. A larger one (an embeddings batch can
    be tens of MB) is not: servers write `usage` near the end, so only the last `TAIL` bytes are
    kept and the last `"usage"` object in them is parsed.
    """

    WHOLE_LIMIT = 1 << 20
    TAIL = 64 * 1024

    __slots__ = ("_parts", "_size", "_tail")

    def __init__(self) -> None:
        self._parts: list[bytes] | None = []
        self._size = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._parts is not None:
            self._parts.append(chunk)
            if self._size <= self.WHOLE_LIMIT:
                return
            chunk, self._parts = b"".join(self._parts), None
        self._tail = (self._tail + chunk)[-self.TAIL :] if len(chunk) < self.TAIL else chunk[-self.TAIL :]

    def usage(self) -> Usage | None:
        if self._parts is not None:
            body = b"".join(self._parts)
            return usage_from_json_body(body) if body[:1] == b"{" else None
        return usage_from_json_tail(self._tail)


def usage_from_json_tail(tail: bytes) -> Usage | None:
    """The last `"usage": {...}` object found in the end of a JSON body, or None."""
    key = tail.rfind(b'"usage"')
    if key < 0:
        return None
    start = tail.find(b"{", key)
    if start < 0 or tail[key + 7 : start].strip(b" \t\r\n:"):
        return None
    end = _object_end(tail, start)
    if end < 0:
        return None
    try:
        return usage_from_object({"usage": orjson.loads(tail[start:end])})
    except orjson.JSONDecodeError:
        return None


def _object_end(data: bytes, start: int) -> int:
    """Index after the JSON object starting at `start` (braces in strings skipped), or -1."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(data)):
        c = data[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


class SseUsageScanner:
    """Feeds SSE chunks as they pass; keeps the first usage object seen (for the Messages API,
    message_start's, then completed by every message_delta after it).

    Chunks may split lines anywhere, so a partial trailing line is carried over. Only lines that
    mention "usage" are decoded: most token chunks are skipped without a JSON parse.
    """

    __slots__ = ("_open", "_tail", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._tail = b""
        self._open = False  # a Messages stream: usage goes on until its last message_delta

    def feed(self, chunk: bytes) -> None:
        if self.usage is not None and not self._open:
            return
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n") + 1  # complete lines end here; the rest is carried over
        self._tail = data[end:] if end < len(data) else b""
        if len(self._tail) > 1 << 20:  # a runaway line without newline: stop carrying it
            self._tail = b""
        if data.find(b'"usage"', 0, end) < 0:  # most token chunks: no split, no parse
            return
        for line in data[:end].split(b"\n"):
            if not line.startswith(b"data:") or b'"usage"' not in line:
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            usage = usage_from_object(obj)
            if usage is None:
                continue
            kind = obj.get("type") if isinstance(obj, dict) else None
            if kind == "message_start":
                self.usage, self._open = usage, True
            elif kind == "message_delta" and self.usage is not None:
                self.usage = _merge_messages_delta(self.usage, usage)
            elif self.usage is None:
                self.usage = usage
                return


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0

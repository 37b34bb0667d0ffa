"""OpenAI (and Anthropic Messages) request bodies: parse, validate, and edit the model value in place.

The raw bytes are kept: a body that needs no change is forwarded byte-identical, and a model
rewrite splices only the value of the top-level `model` key, so numbers, key order and unicode
survive (the reference re-marshals every body Go-style).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from epp.errors import bad_request
from epp.requests.apitype import ApiType, api_type_from_body, api_type_from_path


@dataclass(slots=True)
class ParsedRequest:
    api: ApiType
    raw: bytes
    data: dict[str, Any] | None  # None for passthrough
    model: str = ""
    stream: bool = False
    cache_salt: str = ""
    # The text the prefix index hashes (prompt, or serialised messages/input), as bytes.
    prefix_input: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_chars(self) -> int:
        return len(self.prefix_input)


def parse_request(raw: bytes, path: str | None) -> ParsedRequest:
    """Parse an OpenAI-style body; every failure is a 400 with a message that says what is wrong."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"error unmarshaling request body: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise bad_request(f"request body must be a JSON object, got {_json_kind(data)}")
    api = api_type_from_path(path) or api_type_from_body(data)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model not found in request body")
    req = ParsedRequest(api=api, raw=raw, data=data, model=model)
    req.stream = data.get("stream") is True
    salt = data.get("cache_salt")
    req.cache_salt = salt if isinstance(salt, str) else ""
    req.prefix_input = _prefix_input(api, data)
    return req


def passthrough_request(raw: bytes, path: str | None) -> ParsedRequest:
    """`passthrough-parser`: route without reading the body."""
    return ParsedRequest(api=api_type_from_path(path) or ApiType.COMPLETIONS, raw=raw, data=None)


def _prefix_input(api: ApiType, data: dict[str, Any]) -> bytes:
    if api is ApiType.COMPLETIONS:
        prompt = data.get("prompt")
        if isinstance(prompt, str) and prompt:
            return prompt.encode()
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return " ".join(prompt).encode()
            if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
                return orjson.dumps(prompt)
            if all(isinstance(p, list) for p in prompt):
                return orjson.dumps(prompt)
        raise bad_request("invalid completions request: must have prompt field")
    if api is ApiType.CHAT_COMPLETIONS:
        messages = data.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and _valid_content(m.get("content")) for m in messages)
        ):
            raise bad_request("invalid chat completions request: must have valid messages field")
        return orjson.dumps(messages)
    if api is ApiType.MESSAGES:
        messages = data.get("messages")
        system = data.get("system")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), (str, list)) for m in messages)
        ):
            raise bad_request("invalid messages request: must have valid messages field")
        if system is not None and not isinstance(system, (str, list)):
            raise bad_request("invalid messages request: system must be a string or a list of content blocks")
        # The system prompt first: requests that share it share a prefix, as the server caches it.
        return orjson.dumps([{"system": system}, *messages])
    if api is ApiType.RESPONSES:
        if data.get("input") is None:
            raise bad_request("invalid responses request: must have input field")
        parts = [{"instructions": data.get("instructions")}, {"tools": data.get("tools")}, {"input": data["input"]}]
        return orjson.dumps(parts)
    if api is ApiType.CONVERSATIONS:
        items = data.get("items")
        if not isinstance(items, list) or not items:
            raise bad_request("invalid conversations request: must have items field")
        return orjson.dumps(items)
    inp = data.get("input")
    if isinstance(inp, str) and inp:
        return inp.encode()
    if isinstance(inp, list) and inp:
        return orjson.dumps(inp)
    raise bad_request("invalid embeddings request: must have input field")


def _valid_content(content: Any) -> bool:
    # Assistant tool-call messages legitimately carry `content: null`.
    return content is None or isinstance(content, (str, list))


# Strings (with escapes) and structural characters; everything else is skipped by the regex engine.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', re.S)
_COLON = re.compile(rb"\s*:\s*")
_VALUE_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def model_value_spans(raw: bytes) -> list[tuple[int, int] | None]:
    """Byte spans of every top-level `"model"` key's value (None where it is not a string)."""
    depth = 0
    spans: list[tuple[int, int] | None] = []
    for m in _TOKENS.finditer(raw):
        tok = m.group()
        first = tok[0]
        if first == 0x22:  # '"'
            if depth != 1:
                continue
            if tok != b'"model"' and not (b"\\" in tok and orjson.loads(tok) == "model"):
                continue
            colon = _COLON.match(raw, m.end())
            if colon is None:
                continue  # a value, not a key
            value = _VALUE_STRING.match(raw, colon.end())
            spans.append((value.start(), value.end()) if value else None)
        elif first in (0x7B, 0x5B):  # { [
            depth += 1
        else:
            depth -= 1
    return spans


def find_model_value(raw: bytes) -> tuple[int, int] | None:
    """Byte span of the first top-level `"model"` string value, or None."""
    spans = model_value_spans(raw)
    return spans[0] if spans else None


def replace_model(raw: bytes, new_model: str) -> bytes:
    """Return the body with only the top-level model value replaced.

    A body with two top-level `model` keys is refused: JSON parsers disagree on which one
    counts (orjson and the model servers read the last), so no single edit can make the EPP's
    reading of the rewrite and the server's the same.
    """
    spans = model_value_spans(raw)
    if len(spans) > 1:
        raise bad_request("request body has more than one model field")
    if not spans or spans[0] is None:
        raise bad_request("model not found in request body")
    start, end = spans[0]
    return raw[:start] + orjson.dumps(new_model) + raw[end:]


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."

"""Anthropic's Messages API as vLLM serves it (`POST /v1/messages`): request parsing and the
response bytes (one JSON message, or the event stream: message_start with the input tokens,
content_block_delta per token, message_delta with the stop reason and output tokens, message_stop).

The request becomes the simulator's chat request (system prompt first, content blocks joined as
text), so the engine, tokenizer and prefix cache treat it like /v1/chat/completions.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from epp.sim.protocol import ApiError, ParsedRequest

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return "".join(b.get("text", "") for b in content if b.get("type") == "text")
    raise ApiError(400, f"{where}: content must be a string or a list of content blocks", param=where)


def parse_messages(raw: bytes) -> ParsedRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"Invalid JSON body: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", param="model")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, "'max_tokens' is required and must be a positive integer", param="max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of objects", param="messages")
    chat = [{"role": "system", "content": _text(body["system"], "system")}] if body.get("system") else []
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be user or assistant", param="messages")
        chat.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}]")})
    return ParsedRequest(True, model, None, None, chat, stream, True, max_tokens, bool(body.get("ignore_eos")))


class MessagesWriter:
    """Bytes for one Messages response."""

    __slots__ = ("model", "rid")

    def __init__(self, model: str) -> None:
        self.rid = "msg_" + os.urandom(12).hex()
        self.model = model

    @staticmethod
    def _event(kind: str, data: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self, input_tokens: int, cached_tokens: int) -> bytes:
        message = {
            "id": self.rid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(input_tokens, 0, cached_tokens),
        }
        return self._event("message_start", {"type": "message_start", "message": message}) + self._event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )

    def token(self, text_json: bytes) -> bytes:
        # text_json is the token's text already JSON-escaped, without quotes (as ResponseWriter takes it).
        return (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"' + text_json + b'"}}\n\n'
        )

    def end(self, finish_reason: str, output_tokens: int) -> bytes:
        return (
            self._event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": STOP_REASONS.get(finish_reason, finish_reason), "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
            + self._event("message_stop", {"type": "message_stop"})
        )

    @staticmethod
    def usage(input_tokens: int, output_tokens: int, cached_tokens: int) -> dict[str, int]:
        # Anthropic counts cache reads apart from the (uncached) input tokens.
        return {
            "input_tokens": input_tokens - cached_tokens,
            "cache_read_input_tokens": cached_tokens,
            "cache_creation_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def full(self, text: str, finish_reason: str, input_tokens: int, output_tokens: int, cached_tokens: int) -> bytes:
        return orjson.dumps(
            {
                "id": self.rid,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": STOP_REASONS.get(finish_reason, finish_reason),
                "stop_sequence": None,
                "usage": self.usage(input_tokens, output_tokens, cached_tokens),
            }
        )

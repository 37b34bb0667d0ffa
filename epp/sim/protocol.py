"""OpenAI-compatible request parsing and response bytes, shaped like vLLM's.

Streaming chunks are spliced from precomputed byte prefixes/suffixes per request, so a
token costs one small bytes join rather than a JSON encode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson


class ApiError(Exception):
    """An OpenAI error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, err_type: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type or {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}.get(
            status, "Error"
        )
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}}
        )


@dataclass(slots=True)
class ParsedRequest:
    chat: bool
    model: str
    prompt_text: str | None  # completions text prompt
    prompt_token_ids: list[int] | None  # completions token-id prompt
    messages: list[dict[str, Any]] | None  # chat
    stream: bool
    include_usage: bool
    max_tokens: int | None
    ignore_eos: bool


def _int_or_none(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"'{key}' must be an integer", param=key)
    if v < 1:
        raise ApiError(400, f"{key} must be at least 1, got {v}.", param=key)
    return v


def parse_request(raw: bytes, chat: bool) -> ParsedRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"Invalid JSON body: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", param="stream")
    opts = body.get("stream_options")
    if opts is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", param="stream_options")
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, "the simulator supports only n=1", param="n")
    max_tokens = _int_or_none(body, "max_completion_tokens") if chat else None
    if max_tokens is None:
        max_tokens = _int_or_none(body, "max_tokens")
    ignore_eos = bool(body.get("ignore_eos", False))

    prompt_text = None
    prompt_ids = None
    messages = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "'messages' must be a non-empty list of objects", param="messages")
    else:
        prompt = body.get("prompt")
        # One prompt only: a string, a list of token ids, or a one-element list of either.
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_text = prompt
        elif (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            prompt_ids = prompt
        elif isinstance(prompt, list) and len(prompt) > 1:
            raise ApiError(400, "the simulator supports one prompt per request", param="prompt")
        else:
            raise ApiError(400, "'prompt' must be a string or a list of token ids", param="prompt")
    return ParsedRequest(chat, model, prompt_text, prompt_ids, messages, stream, include_usage, max_tokens, ignore_eos)


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class ResponseWriter:
    """Bytes for one request's responses."""

    __slots__ = ("_head", "_obj", "_tail", "chat", "created", "model_json", "rid")

    def __init__(self, chat: bool, request_id: str, model: str, created: int | None = None) -> None:
        self.chat = chat
        self.rid = request_id
        self.created = int(time.time()) if created is None else created
        self.model_json = orjson.dumps(model)
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._obj = obj
        common = b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":[{"index":0,' % (
            request_id.encode(),
            obj.encode(),
            self.created,
            self.model_json,
        )
        if chat:
            self._head = common + b'"delta":{"content":"'
            self._tail = b'"},"logprobs":null,"finish_reason":'
        else:
            self._head = common + b'"text":"'
            self._tail = b'","logprobs":null,"finish_reason":'

    def role_chunk(self) -> bytes:
        return (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
            % (self.rid.encode(), self.created, self.model_json)
        )

    def token_chunk(self, text_json: bytes, finish_reason: str | None) -> bytes:
        if finish_reason is None:
            end = b'null,"stop_reason":null}]}\n\n' if not self.chat else b"null}]}\n\n"
        else:
            end = (b'"%s","stop_reason":null}]}\n\n' if not self.chat else b'"%s"}]}\n\n') % finish_reason.encode()
        return self._head + text_json + self._tail + end

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": self.rid,
                    "object": self._obj,
                    "created": self.created,
                    "model": orjson.loads(self.model_json),
                    "choices": [],
                    "usage": usage,
                }
            )
            + b"\n\n"
        )

    def full(self, text: str, finish_reason: str, usage: dict[str, Any]) -> bytes:
        model = orjson.loads(self.model_json)
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            obj = "text_completion"
        return orjson.dumps(
            {
                "id": self.rid,
                "object": obj,
                "created": self.created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        )


DONE = b"data: [DONE]\n\n"

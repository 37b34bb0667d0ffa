"""Which API a request speaks (OpenAI's, or Anthropic's Messages), from its path (or its body when no
path is known)."""

from __future__ import annotations

from enum import Enum
from typing import Any


class ApiType(str, Enum):
    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat/completions"
    RESPONSES = "responses"
    CONVERSATIONS = "conversations"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"  # Anthropic's Messages API, as vLLM serves it at /v1/messages


# Suffix order matters: "/chat/completions" must win over "/completions".
_SUFFIXES = (
    ("/conversations", ApiType.CONVERSATIONS),
    ("/responses", ApiType.RESPONSES),
    ("/chat/completions", ApiType.CHAT_COMPLETIONS),
    ("/completions", ApiType.COMPLETIONS),
    ("/embeddings", ApiType.EMBEDDINGS),
    ("/v1/messages", ApiType.MESSAGES),
)


def api_type_from_path(path: str | None) -> ApiType | None:
    """Suffix match on the path without its query string (the reference forgets to strip it)."""
    if not path:
        return None
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    for suffix, api in _SUFFIXES:
        if path.endswith(suffix):
            return api
    return None


def api_type_from_body(body: dict[str, Any]) -> ApiType:
    """NGINX shims send no pseudo-headers: infer the API from the fields present."""
    if "messages" in body:
        # A top-level system prompt is Anthropic's; OpenAI puts it among the messages.
        return ApiType.MESSAGES if "system" in body else ApiType.CHAT_COMPLETIONS
    if "items" in body:
        return ApiType.CONVERSATIONS
    if "input" in body:
        # Responses and embeddings both carry `input`; responses have instructions/tools/stream.
        if any(k in body for k in ("instructions", "tools", "stream", "previous_response_id")):
            return ApiType.RESPONSES
        return ApiType.EMBEDDINGS
    return ApiType.COMPLETIONS

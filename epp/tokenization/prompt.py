"""What of a request body is tokenized: a completion prompt or chat messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import xxhash


@dataclass(frozen=True, slots=True)
class Prompt:
    model: str
    text: str | None = None  # completions
    messages: list[dict[str, Any]] | None = None  # chat
    token_ids: list[int] | None = None  # a completion prompt given as token ids: nothing to do

    def cache_key(self) -> int:
        h = xxhash.xxh3_64(self.model.encode("utf-8", "surrogatepass"))
        if self.text is not None:
            h.update(b"\x00t" + self.text.encode("utf-8", "surrogatepass"))
        if self.messages is not None:
            h.update(b"\x00m" + orjson.dumps(self.messages))
        return h.intdigest()


def prompt_of(api: str, data: dict[str, Any] | None, model: str) -> Prompt | None:
    """The part of a parsed body a tokenizer needs; None for what it cannot tokenize
    (batched prompts, responses/embeddings APIs, passthrough bodies)."""
    if data is None:
        return None
    if api == "completions":
        p = data.get("prompt")
        if isinstance(p, str):
            return Prompt(model, text=p)
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            return Prompt(model, token_ids=p)
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            return Prompt(model, text=p[0])
        return None
    if api == "chat/completions":
        msgs = data.get("messages")
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
            return Prompt(model, messages=msgs)
    return None

"""Tokens from the model server: vLLM's POST /tokenize, or the render endpoints
(/v1/completions/render, /v1/chat/completions/render) of a server or a render sidecar.

Whichever is asked, it applies the model's own tokenizer and chat template, so the tokens
are exactly what that server prefills. Costs one HTTP round trip on the request path (the
request waits for it like for a parsed body); bounded by a timeout, after which the request
is scheduled with the approximate index instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from epp.tokenization.prompt import Prompt


class RemoteTokenizeError(Exception):
    pass


class RemoteTokenizer:
    def __init__(self, endpoint: str = "tokenize", timeout_s: float = 2.0, max_connections: int = 64) -> None:
        if endpoint not in ("tokenize", "render"):
            raise ValueError("endpoint must be 'tokenize' or 'render'")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, limits=self._limits, trust_env=False)
        return self._client

    def _request(self, base: str, prompt: Prompt) -> tuple[str, dict[str, Any]]:
        base = base.rstrip("/")
        if prompt.messages is not None:
            body: dict[str, Any] = {"model": prompt.model, "messages": prompt.messages}
            if self.endpoint == "tokenize":
                body["add_generation_prompt"] = True
                return base + "/tokenize", body
            return base + "/v1/chat/completions/render", body
        body = {"model": prompt.model, "prompt": prompt.text or ""}
        return (base + "/tokenize", body) if self.endpoint == "tokenize" else (base + "/v1/completions/render", body)

    async def tokenize(self, base_url: str, prompt: Prompt) -> list[int]:
        if prompt.token_ids is not None:
            return prompt.token_ids
        url, body = self._request(base_url, prompt)
        try:
            resp = await asyncio.wait_for(
                self._http().post(url, content=orjson.dumps(body), headers={"content-type": "application/json"}),
                self.timeout_s,
            )
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            raise RemoteTokenizeError(f"{url}: {type(exc).__name__} {exc}") from None
        if resp.status_code != 200:
            raise RemoteTokenizeError(f"{url}: HTTP {resp.status_code}")
        try:
            data = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise RemoteTokenizeError(f"{url}: not JSON") from None
        ids = _token_ids(data)
        if ids is None:
            raise RemoteTokenizeError(f"{url}: no token ids in the answer")
        return ids

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _token_ids(data: Any) -> list[int] | None:
    if not isinstance(data, dict):
        return None
    for key in ("tokens", "token_ids", "prompt_token_ids"):
        v = data.get(key)
        if isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
            return v
    return None

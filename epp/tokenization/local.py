"""A local Hugging Face tokenizer (`tokenizers`) and the model's chat template (Jinja2).

The directory holds `tokenizer.json` and, for chat, `tokenizer_config.json` with its
`chat_template` and `bos_token` (the files a model repository ships). Rendering follows
transformers' apply_chat_template: a sandboxed Jinja environment with `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`.

Tokenizing the rendered text is done per segment between special tokens, each segment
cached: special tokens always split the text before the tokenizer's own pre-tokenization, so
the ids of the whole are the ids of its segments, and a system prompt shared by many
requests is tokenized once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from epp.tokenization.cache import TokenCache
from epp.tokenization.prompt import Prompt


class TokenizerLoadError(ValueError):
    pass


class LocalTokenizer:
    def __init__(
        self,
        path: str | Path,
        chat_template: str | None = None,
        add_bos: bool | None = None,
        segment_cache_tokens: int = 2_000_000,
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise TokenizerLoadError("the `tokenizers` package is not installed") from exc
        p = Path(path)
        tok_file = p / "tokenizer.json" if p.is_dir() else p
        cfg_file = (p if p.is_dir() else p.parent) / "tokenizer_config.json"
        if not tok_file.is_file():
            raise TokenizerLoadError(f"no tokenizer.json at {tok_file}")
        try:
            self._tok = Tokenizer.from_file(str(tok_file))
        except Exception as exc:
            raise TokenizerLoadError(f"{tok_file}: {exc}") from None
        cfg: dict[str, Any] = {}
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text())
            except ValueError as exc:
                raise TokenizerLoadError(f"{cfg_file}: {exc}") from None
        self.bos_token = _token_text(cfg.get("bos_token")) or ""
        self.eos_token = _token_text(cfg.get("eos_token")) or ""
        self.add_bos = bool(cfg.get("add_bos_token", bool(self.bos_token))) if add_bos is None else add_bos
        template = chat_template if chat_template is not None else cfg.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self._template = None
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            try:
                self._template = env.from_string(template)
            except Exception as exc:
                raise TokenizerLoadError(f"chat template: {exc}") from None
        specials = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
        self._split = (
            re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
            if specials
            else None
        )
        self._special_ids = {s: self._tok.token_to_id(s) for s in specials}
        self._bos_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.segments = TokenCache(segment_cache_tokens)

    def render(self, messages: list[dict[str, Any]]) -> str:
        if self._template is None:
            raise TokenizerLoadError("this tokenizer has no chat template (tokenizer_config.json chat_template)")
        return self._template.render(
            messages=messages, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
        )

    def encode_text(self, text: str) -> list[int]:
        if self._split is None:
            return list(self._cached(text))
        out: list[int] = []
        specials = self._special_ids
        for part in self._split.split(text):
            if not part:
                continue
            sid = specials.get(part)
            if sid is not None:
                out.append(sid)
            else:
                out.extend(self._cached(part))
        return out

    def _cached(self, segment: str) -> Sequence[int]:
        ids = self.segments.get(segment)
        if ids is None:
            ids = list(self._tok.encode(segment, add_special_tokens=False).ids)
            self.segments.put(segment, ids)
        return ids

    def tokenize(self, prompt: Prompt) -> list[int]:
        if prompt.token_ids is not None:
            return prompt.token_ids
        if prompt.messages is not None:
            return self.encode_text(self.render(prompt.messages))
        ids = self.encode_text(prompt.text or "")
        if self.add_bos and self._bos_id is not None:
            ids = [self._bos_id, *ids]
        return ids


def _token_text(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None

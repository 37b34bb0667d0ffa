"""The simulator's own tokenizer and its deterministic output-token source.

The EPP estimates token counts from character counts. If the simulator used the same
shortcut, any benchmark would flatter the EPP, so token counts here come from an
independent scheme: a regex split into words, numbers and punctuation (with the leading
space attached, as BPE vocabularies do), long words cut into sub-word pieces, and a stable
id per piece from xxhash. Chat requests are rendered with a fixed Llama-3 style template
first, so the special tokens and role headers cost tokens as they do on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import xxhash

# Llama-3 vocabulary size and special token ids, so ids look plausible to anything that
# inspects them (KV events carry token ids).
VOCAB_SIZE = 128_256
BOS_ID = 128_000
EOS_ID = 128_009  # <|eot_id|>
SPECIAL_TOKENS: dict[str, int] = {
    "<|begin_of_text|>": 128_000,
    "<|end_of_text|>": 128_001,
    "<|start_header_id|>": 128_006,
    "<|end_header_id|>": 128_007,
    "<|eot_id|>": 128_009,
}
# Ordinary pieces map into [0, ORDINARY_VOCAB) so they never collide with special ids.
ORDINARY_VOCAB = 128_000

_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
# A word, a run of up to 3 digits, or a run of punctuation, each with an optional leading
# space; leftover whitespace (newlines, double spaces) becomes its own piece.
_PIECE_RE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\w\s]+|\s+(?!\S)|\s+|_+")
# Real BPE vocabularies hold common words whole and split rare, long ones; cutting words
# longer than this into chunks gives ~1.3 tokens per English word, close to Llama-3.
_MAX_WORD = 8
_CHUNK = 5


def _piece_id(piece: str) -> int:
    return xxhash.xxh32_intdigest(piece.encode("utf-8", "surrogatepass")) % ORDINARY_VOCAB


class Tokenizer:
    """Deterministic text -> token ids. Ids of a piece never change across runs."""

    def __init__(self, cache_size: int = 200_000, segment_cache_chars: int = 10_000_000) -> None:
        self._cache: dict[str, int] = {}
        self._cache_size = cache_size
        # Paragraphs (text cut before a "\n\n" that follows a non-space) tokenize to the same ids
        # alone as inside the whole, so a long system prompt shared by many requests is split
        # into pieces once. One process simulates many GPUs whose API servers would tokenize in
        # parallel on their own CPUs; this keeps tokenizing from stalling every simulated engine.
        self._segments: dict[str, list[int]] = {}
        self._segment_chars = 0
        self._segment_cap = segment_cache_chars

    def _id(self, piece: str) -> int:
        tid = self._cache.get(piece)
        if tid is None:
            tid = _piece_id(piece)
            if len(self._cache) < self._cache_size:
                self._cache[piece] = tid
        return tid

    def pieces(self, text: str) -> list[str]:
        out: list[str] = []
        for part in _SPECIAL_RE.split(text):
            if not part:
                continue
            if part in SPECIAL_TOKENS:
                out.append(part)
                continue
            for piece in _PIECE_RE.findall(part):
                if len(piece) > _MAX_WORD:
                    out.extend(piece[i : i + _CHUNK] for i in range(0, len(piece), _CHUNK))
                else:
                    out.append(piece)
        return out

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [BOS_ID] if add_bos else []
        if len(text) < 2048:
            ids.extend(self._encode(text))
            return ids
        for seg in _paragraphs(text):
            cached = self._segments.get(seg)
            if cached is None:
                cached = self._encode(seg)
                if len(seg) >= 2048 and self._segment_chars + len(seg) <= self._segment_cap:
                    self._segments[seg] = cached
                    self._segment_chars += len(seg)
            ids.extend(cached)
        return ids

    def _encode(self, text: str) -> list[int]:
        special = SPECIAL_TOKENS
        out = []
        for piece in self.pieces(text):
            sid = special.get(piece)
            out.append(sid if sid is not None else self._id(piece))
        return out


_PARAGRAPH_RE = re.compile(r"(?<=\S)(?=\n\n)")


def _paragraphs(text: str) -> list[str]:
    """Cut before every "\n\n" that follows a non-space character: no piece of the regex ever
    spans such a point (a word ends there and a whitespace run starts), so it is exact."""
    return _PARAGRAPH_RE.split(text)


def render_chat(messages: Iterable[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Llama-3 chat template. Content may be a string or a list of text parts."""
    parts = ["<|begin_of_text|>"]
    for msg in messages:
        role = str(msg.get("role", "user"))
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type", "text") == "text"
            )
        elif content is None:
            content = ""
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{str(content).strip()}<|eot_id|>")
    if add_generation_prompt:
        parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


# Syllables for the output vocabulary: pronounceable pseudo-words that the tokenizer maps
# back to exactly one token each (" " + word, at most _MAX_WORD chars), so a client that
# sends a generated answer back in the next turn re-tokenizes it to the same ids and gets
# prefix-cache hits, as with a real model.
_ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]


@dataclass(frozen=True, slots=True)
class OutputPiece:
    token_id: int
    text: str
    json: bytes  # the text JSON-escaped, without quotes, ready to splice into a chunk


class OutputVocab:
    """Deterministic generated tokens: token i of a request is a pure function of
    (seed, request key, i), so usage counts and KV contents are reproducible."""

    def __init__(self, tokenizer: Tokenizer, size: int = 1024) -> None:
        words: list[str] = []
        seen_ids: set[int] = set()
        syll = [o + v for o in _ONSETS for v in _VOWELS]
        n = 0
        while len(words) < size:
            a, b, c = syll[n % len(syll)], syll[(n // len(syll)) % len(syll)], n % 3
            word = " " + (a + b if c else a + b + "n")
            n += 1
            ids = tokenizer.encode(word)
            if len(ids) != 1 or ids[0] in seen_ids:
                continue
            seen_ids.add(ids[0])
            words.append(word)
        self.pieces: list[OutputPiece] = []
        self.by_id: dict[int, OutputPiece] = {}
        for w in words:
            tid = tokenizer.encode(w)[0]
            p = OutputPiece(tid, w, w.encode())  # pseudo-words need no JSON escaping
            self.pieces.append(p)
            self.by_id[tid] = p
        self._size = len(self.pieces)

    def token(self, key: int, index: int) -> int:
        h = xxhash.xxh64_intdigest(index.to_bytes(4, "little"), seed=key & 0xFFFFFFFFFFFFFFFF)
        return self.pieces[h % self._size].token_id

    def text(self, token_ids: Iterable[int]) -> str:
        by_id = self.by_id
        return "".join(by_id[t].text if t in by_id else "" for t in token_ids)


def request_key(seed: int, token_ids: list[int]) -> int:
    """Per-request generation key: same seed and prompt -> same answer."""
    h = xxhash.xxh64(seed=seed & 0xFFFFFFFFFFFFFFFF)
    h.update(len(token_ids).to_bytes(4, "little"))
    h.update(b"".join(t.to_bytes(4, "little") for t in token_ids[:4096]))
    return h.intdigest()


def natural_output_len(key: int, mean: int) -> int:
    """Where the model would emit EOS if not told to ignore it: uniform in [mean/2, 3mean/2]."""
    lo = max(1, mean // 2)
    span = max(1, mean)
    return lo + (key >> 17) % span

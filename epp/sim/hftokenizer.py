"""A Hugging Face `tokenizer.json` as the simulator's prompt tokenizer, and a way to build one.

There is no model hub here, so tests and benchmarks that exercise the EPP's local-tokenizer
path build a small byte-level BPE tokenizer from a deterministic corpus (`build`), with the
Llama-3 special tokens, and point both epp-sim (`--tokenizer-file`) and the EPP's
`token-producer` at the same file: the two then agree token for token, as a real vLLM and an
EPP given the model's tokenizer do.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from epp.sim.tokenizer import SPECIAL_TOKENS

# The chat template the simulator renders (epp.sim.tokenizer.render_chat), in Jinja, as it
# would appear in the model's tokenizer_config.json.
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = message['content'] %}"
    "{% elif message['content'] is none %}{% set content = '' %}"
    "{% else %}{% set content = message['content'] | selectattr('type', 'equalto', 'text') "
    "| map(attribute='text') | join('') %}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + content | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


class HFTokenizer:
    """Same interface as epp.sim.tokenizer.Tokenizer for prompts: encode(text, add_bos)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(path))
        bos = self._tok.token_to_id("<|begin_of_text|>")
        self.bos_id = bos if bos is not None else 0

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syll = [o + v for o in "bcdfghklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    words += [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "with",
        "was",
        "on",
        "be",
        "by",
        "this",
        "are",
        "from",
        "at",
        "or",
    ]
    lines = []
    for _ in range(n_lines):
        lines.append(
            " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))
            + rng.choice([".", "?", "!", ",", ":"])
            + " "
            + str(rng.randint(0, 99999))
        )
    return lines


def build(directory: str | Path, vocab_size: int = 4096, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer and write tokenizer.json + tokenizer_config.json
    (with the chat template) into `directory`. Deterministic for a given seed; ~1 s."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.__getitem__)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(20_000, seed), trainer=trainer)
    path = d / "tokenizer.json"
    tok.save(str(path))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "chat_template": LLAMA3_CHAT_TEMPLATE,
                "add_bos_token": True,
            },
            indent=1,
        )
    )
    return path


def main() -> None:
    import sys

    out = build(sys.argv[1] if len(sys.argv) > 1 else "tokenizer")
    print(out)


if __name__ == "__main__":
    main()

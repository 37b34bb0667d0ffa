"""`epp-bench inference-perf`: drive the same fleet and router with kubernetes-sigs/inference-perf.

A cross-check with a client we did not write. inference-perf needs Python >= 3.12 (pyenv's 3.12
here) and a Hugging Face tokenizer; offline, a local one is built with the `tokenizers` package
(a word-level vocabulary, one token per whitespace-separated word, close to epp-sim's count).
Its venv lives in .bench-venvs/inference-perf, like the peer routers'.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from epp.bench.peers import VENVS
from epp.bench.routers import parse_router, start_router
from epp.bench.simfleet import start_fleet
from epp.bench.workloads import MODEL, FleetSpec

TOKENIZER_SCRIPT = """
import sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
import random
rng = random.Random(0)
words = set()
while len(words) < 30000:  # letters only: epp-sim's tokenizer makes each exactly one token
    words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7))))
words = sorted(words)
vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(sys.argv[1])
"""


def _python312() -> str:
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or os.path.expanduser(
        "~/.pyenv"
    )
    for v in sorted(Path(root, "versions").glob("3.1[2-9]*"), reverse=True):
        exe = v / "bin" / "python3"
        if exe.exists():
            return str(exe)
    found = shutil.which("python3.12")
    if not found:
        raise RuntimeError("inference-perf needs Python >= 3.12 (none found under pyenv or on PATH)")
    return found


def ensure_inference_perf() -> Path:
    venv = VENVS / "inference-perf"
    exe = venv / "bin" / "inference-perf"
    if not exe.exists():
        print(f"  installing inference-perf into {venv} (about 800 MB) ...", flush=True)
        subprocess.run([_python312(), "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "inference-perf"], timeout=1800)
        if r.returncode != 0 or not exe.exists():
            raise RuntimeError("pip install inference-perf failed")
    return venv


def ensure_tokenizer(venv: Path) -> Path:
    tok = VENVS / "offline-tokenizer"
    if not (tok / "tokenizer.json").exists():
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", TOKENIZER_SCRIPT, str(tok)],
            check=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        )
    return tok.resolve()


def config(base_url: str, tokenizer: Path, rates: list[float], duration: float, out: Path) -> dict:
    """The shared-prefix workload with epp-bench's default shape, Poisson stages at `rates`."""
    return {
        "api": {"type": "completion", "streaming": True},
        "server": {"type": "vllm", "model_name": MODEL, "base_url": base_url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer)},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": 24,
                "num_prompts_per_group": 5,
                "system_prompt_len": 4000,
                "question_len": 800,
                "output_len": 16,
                "seed": 1,
            },
        },
        "load": {"type": "poisson", "stages": [{"rate": r, "duration": duration} for r in rates], "num_workers": 1},
        "report": {"request_lifecycle": {"summary": True, "per_stage": True, "per_request": False}},
        "storage": {"local_storage": {"path": str(out.resolve())}},
    }


def run_inference_perf(router: str, rates: list[float], duration: float, out: Path) -> Path:
    venv = ensure_inference_perf()
    tok = ensure_tokenizer(venv)
    workdir = Path(tempfile.mkdtemp(prefix="epp-bench-ip-"))
    fleet = start_fleet(FleetSpec(replicas=8, num_gpu_blocks=4096), 1.0, workdir)
    try:
        running = start_router(parse_router(router), fleet, workdir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            cfg = workdir / "inference-perf.yaml"
            cfg.write_text(yaml.safe_dump(config(running.url, tok, rates, duration, out)))
            env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            subprocess.run(
                [str(venv / "bin" / "inference-perf"), "-c", str(cfg)],
                check=True,
                env=env,
                timeout=120 + len(rates) * duration * 3,
            )
        finally:
            running.stop()
    finally:
        fleet.stop()
    summary = out / "summary_lifecycle_metrics.json"
    if summary.exists():
        print(json.dumps(json.loads(summary.read_text()), indent=1)[:3000])
    return out

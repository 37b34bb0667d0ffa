"""Peer routers live in their own virtual environments, installed on demand with pip.

They are not dependencies of this project (Rust wheels of ~100 MB each); a peer that cannot be
installed is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENVS = Path(os.environ.get("EPP_BENCH_VENVS", ".bench-venvs"))
PACKAGES = {"smg": "sglang-router", "vllm-router": "vllm-router"}


class PeerUnavailable(RuntimeError):
    pass


def peer_binary(command: str, install: bool = True) -> str:
    """Path of the peer's console script, installing its package into .bench-venvs/<package> if needed."""
    package = PACKAGES[command]
    venv = VENVS / package
    exe = venv / "bin" / command
    if exe.exists():
        return str(exe.resolve())
    if not install:
        raise PeerUnavailable(f"{package} is not installed in {venv} (run without --no-install)")
    print(f"  installing {package} into {venv} ...", flush=True)
    log = VENVS / f"{package}.log"
    VENVS.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "wb") as out:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out, timeout=300)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", package], check=True, stdout=out,
                           stderr=out, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise PeerUnavailable(f"pip install {package} failed: {exc}; {' '.join(tail)}") from None
    if not exe.exists():
        raise PeerUnavailable(f"{package} installed but {exe} is missing")
    return str(exe.resolve())

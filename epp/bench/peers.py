"""Peer routers live in their own virtual environments, installed on demand with pip.

They are not dependencies of this project (Rust wheels of ~100 MB each); a peer that cannot be
installed is reported as skipped with the reason, never silently dropped. Versions are pinned so
results stay comparable; `peer_version` records what actually ran.

* `smg` — the SGLang Model Gateway as it ships now (package `smg`);
* `sglang-router` — its January predecessor (package `sglang-router` 0.3.2, same `smg` command);
* `vllm-router` — vLLM's fork of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENVS = Path(os.environ.get("EPP_BENCH_VENVS", ".bench-venvs"))
# kind -> (package, pinned version, console script)
PACKAGES = {
    "smg": ("smg", "1.13.0", "smg"),
    "sglang-router": ("sglang-router", "0.3.2", "smg"),
    "vllm-router": ("vllm-router", "0.1.17", "vllm-router"),
}


class PeerUnavailable(RuntimeError):
    pass


def peer_binary(kind: str, install: bool = True) -> str:
    """Path of the peer's console script, installing its pinned package into .bench-venvs/<package> if needed."""
    package, version, command = PACKAGES[kind]
    venv = VENVS / package
    exe = venv / "bin" / command
    if exe.exists() and installed_version(venv, package) == version:
        return str(exe.resolve())
    if not install:
        raise PeerUnavailable(f"{package}=={version} is not installed in {venv} (run without --no-install)")
    print(f"  installing {package}=={version} into {venv} ...", flush=True)
    log = VENVS / f"{package}.log"
    VENVS.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "wb") as out:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out, timeout=300)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", f"{package}=={version}"],
                check=True,
                stdout=out,
                stderr=out,
                timeout=900,
            )
    except (subprocess.SubprocessError, OSError) as exc:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise PeerUnavailable(f"pip install {package}=={version} failed: {exc}; {' '.join(tail)}") from None
    if not exe.exists():
        raise PeerUnavailable(f"{package} installed but {exe} is missing")
    return str(exe.resolve())


def installed_version(venv: Path, package: str) -> str:
    """The version pip installed in `venv` ("" if none), read from its dist-info directory."""
    norm = package.replace("-", "_").lower()
    for d in venv.glob("lib/python*/site-packages/*.dist-info"):
        name, _, ver = d.name[: -len(".dist-info")].rpartition("-")
        if name.lower() == norm:
            return ver
    return ""


def peer_version(kind: str) -> str:
    """`<package> <version>` of an installed peer, for result files."""
    package, _, _ = PACKAGES[kind]
    return f"{package} {installed_version(VENVS / package, package) or 'not installed'}"

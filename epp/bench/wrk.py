"""Run wrk (Debian package) and parse its --latency report."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_LUA = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v if unit == "ms" else v * 1000 if unit == "s" else v * 60000


def parse(output: str) -> WrkResult:
    rps = float(_find(r"Requests/sec:\s+([\d.]+)", output))
    reqs = int(_find(r"(\d+) requests in", output))
    p50 = _ms(_find(r"\s50%\s+(\S+)", output))
    p99 = _ms(_find(r"\s99%\s+(\S+)", output))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        errors += sum(int(x) for x in m.groups())
    return WrkResult(reqs, rps, p50, p99, errors)


def run(url: str, body_path: Path, connections: int, seconds: float, workdir: Path) -> WrkResult:
    script = workdir / f"post-{body_path.stem}.lua"
    script.write_text(_LUA.format(body=body_path))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr or out.stdout}")
    return parse(out.stdout)


def _find(pattern: str, output: str) -> str:
    m = re.search(pattern, output)
    if m is None:
        raise RuntimeError(f"wrk output has no match for {pattern!r}: {output[-300:]}")
    return m.group(1)

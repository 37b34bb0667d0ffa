"""Result files: one JSON object per run, `{"meta": {...}, "rows": [...]}`, rewritten after every point
so an interrupted run keeps what it measured."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    """HEAD, with "+dirty" when epp/ has uncommitted changes (the code that ran is then not HEAD)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "epp", ":(exclude)epp/bench"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


class ResultFile:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def write_points(out_dir: Path | None, stem: str, points: list[Any], markdown: str) -> None:
    """`<stem>.json` (the dataclass points) and `<stem>.md` (their table) in `out_dir`, if given."""
    if out_dir is None:
        return
    from dataclasses import asdict

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps([asdict(p) for p in points], indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown)

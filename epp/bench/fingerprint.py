"""A content hash of the code that decides where a request goes.

Live results record it; the virtual-time replay of those results can only be held to tight
tolerances while the scheduler is the same code that ran live.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("scheduling", "flowcontrol", "requestcontrol/director.py", "datalayer/endpoint.py")


def scheduler_fingerprint() -> str:
    h = hashlib.sha256()
    for rel in PATHS:
        p = ROOT / rel
        files = sorted(f for f in p.rglob("*") if f.suffix in (".py", ".yaml")) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]

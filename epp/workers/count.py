"""How many ext_proc workers `--workers auto` means (kept free of heavy imports: the CLI asks)."""

from __future__ import annotations

import os


def default_workers(cap: int = 8) -> int:
    """The CPUs this process may use, at most `cap` (one decision process feeds them all)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cap, cpus))

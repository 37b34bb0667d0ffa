"""PNG plots: TTFT p90 and output tokens/s against offered load, one line per router (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_workload(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for router in dict.fromkeys(r["router"] for r in rows):
        pts = sorted((r for r in rows if r["router"] == router), key=lambda r: r["qps"])
        xs = [p["qps"] for p in pts]
        a.plot(
            xs, [p["ttft_p90"] if p["ttft_p90"] is not None else float("nan") for p in pts], marker="o", label=router
        )
        b.plot(xs, [p["output_tokens_per_s"] for p in pts], marker="o", label=router)
    a.set_yscale("log")
    a.set_xlabel("offered load (requests / simulated s)")
    a.set_ylabel("TTFT p90 (s)")
    a.set_title(f"{title}: TTFT p90")
    b.set_xlabel("offered load (requests / simulated s)")
    b.set_ylabel("output tokens / s")
    b.set_title(f"{title}: output throughput")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
    b.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # No timestamps in the file: the same JSON gives the same PNG bytes with the same matplotlib.
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_ladder(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """TTFT p90 and output throughput vs load, one line per router (mean over seeds, the seeds' range
    shaded), the floor of the stage's prompts drawn dashed."""
    from statistics import mean

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    loads = sorted({r["load"] for r in rows})
    floors = [mean(r["floor_p90"] for r in rows if r["load"] == x and r.get("floor_p90") is not None) for x in loads]
    a.plot(loads, floors, "k--", lw=1.2, label="floor (no router can beat)")
    for router in dict.fromkeys(r["router"] for r in rows):
        for ax, key in ((a, "ttft_p90"), (b, "output_tokens_per_s")):
            xs, ms, lo, hi = [], [], [], []
            for x in loads:
                vals = [r[key] for r in rows if r["router"] == router and r["load"] == x and r.get(key) is not None]
                if vals:
                    xs.append(x)
                    ms.append(mean(vals))
                    lo.append(min(vals))
                    hi.append(max(vals))
            (line,) = ax.plot(xs, ms, marker="o", label=router, lw=2.2 if router == "epp" else 1.3)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    a.set_yscale("log")
    a.set_ylabel("TTFT p90 (simulated s)")
    b.set_ylabel("output tokens / simulated s")
    for ax, t in ((a, "TTFT p90"), (b, "output throughput")):
        ax.set_xlabel("offered load (fraction of fleet capacity)")
        ax.set_title(f"{title}: {t}")
        ax.grid(True, alpha=0.3)
    a.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path

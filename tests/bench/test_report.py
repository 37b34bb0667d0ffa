"""The report is a pure function of the JSON results: committed report.md regenerates byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from epp.bench.report import REPORT, render, write_report

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _row(router: str, load: float, ttft: float, tps: float) -> dict:
    return {
        "router": router,
        "workload": "shared-prefix",
        "qps": 10 * load,
        "load": load,
        "requests": 100,
        "success_rate": 1.0,
        "ttft_p50": ttft / 2,
        "ttft_p90": ttft,
        "ttft_p99": ttft * 1.5,
        "itl_p50": 0.011,
        "e2e_p90": ttft + 1,
        "output_tokens_per_s": tps,
        "prefix_cache_hit_rate": 0.5,
        "per_server_share": {"sim-0": 0.75, "sim-1": 0.25},
        "mode": "live",
    }


def test_committed_report_regenerates_byte_for_byte() -> None:
    if not (RESULTS / REPORT).exists():
        pytest.skip("no committed report yet")
    assert render(RESULTS, plots=False) == (RESULTS / REPORT).read_text()


def test_report_is_deterministic_and_shows_every_point(tmp_path: Path) -> None:
    rows = [
        _row("epp", 0.5, 0.2, 300.0),
        _row("envoy-rr", 0.5, 2.0, 150.0),
        _row("epp", 1.0, 0.4, 500.0),
        _row("envoy-rr", 1.0, 4.0, 200.0),
    ]
    meta = {"machine": {"cpu": "test cpu", "cores": 2, "python": "3.11"}, "skipped": {"smg-x": "pip failed"}}
    (tmp_path / "live.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    first = write_report(tmp_path).read_bytes()
    assert (tmp_path / "live-shared-prefix.png").stat().st_size > 0
    shutil.copy(tmp_path / "live.json", tmp_path / "copy.json")
    assert write_report(tmp_path).read_bytes() == first
    text = first.decode()
    assert "**Skipped** `smg-x`: pip failed" in text
    # Headline at the top load: EPP TTFT p90 is 0.1x and throughput 2.5x round-robin's.
    assert "| shared-prefix | **epp** | 1.00 | 0.400 | 0.10 | 500.0 | 2.50 | 1.000 |" in text
    assert text.count("\n| epp | ") == 2 and text.count("\n| envoy-rr | ") == 2  # one table row per point
    assert "0.75 / 2" in text  # busiest server's share / servers used

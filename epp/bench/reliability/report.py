"""bench/results/reliability.md: a table per stage, with the machine, commit, date and run time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epp.bench.reliability.stageresult import StageResult

HEADER = """# Reliability: fuzz, faults under load, soak, 1,000 endpoints

Written by `make bench-reliability` (`python -m epp.bench.reliability`); what each stage does
is in the docstrings of epp/bench/reliability/*.py and in docs/reliability.md. Bounds are
issue 13's "Done means". Every process runs on this machine at once (Envoy, the EPP,
simulators, load generator), all on 127.0.0.1.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[StageResult], meta: dict[str, Any]) -> str:
    lines = [HEADER]
    m = meta["machine"]
    lines += [
        f"* **Last run**: {meta['date']}, commit `{meta['commit']}`, `{meta['command']}`, "
        f"{meta['wall_s'] / 60:.1f} minutes in all{' (quick: shortened stages)' if meta['quick'] else ''}"
        + (f"; {meta['full_run']}" if meta.get("full_run") else ""),
        f"* **Machine**: {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"load average {', '.join(map(str, m['load_avg_at_start']))} at start",
        "",
        "| stage | result | time | measured |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        verdict = "error" if r.error else "meets every bound" if r.passed else "misses a bound"
        when = f"{r.run.get('date', '')}, `{r.run.get('commit', '')}`"
        lines.append(f"| [{r.title}](#{r.name}) | {verdict} | {r.seconds:.0f} s | {when} |")
    for r in results:
        lines += [
            "",
            f"## {r.title}",
            f'<a id="{r.name}"></a>',
            "",
            "| measured | value | bound | met |",
            "| --- | --- | --- | --- |",
        ]
        for row in r.rows:
            met = "" if row.ok is None else "yes" if row.ok else "**no**"
            lines.append(f"| {_cell(row.what)} | {_cell(row.value)} | {_cell(row.bound)} | {met} |")
        if r.error:
            lines += ["", f"Stage error: {_cell(r.error)}"]
        for n in r.notes:
            lines += ["", _cell(n)]
    return "\n".join(lines) + "\n"


def write(path: Path, results: list[StageResult], meta: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, meta))
    return path

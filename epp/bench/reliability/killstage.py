"""Stage `kill`: a model server killed (and one frozen) under load, in each configuration issue 13 names.

Two `epp-sim --replicas 4` processes behind the EPP and Envoy, 32 streaming clients; one
process is killed with SIGKILL (or stopped with SIGSTOP) for the window, then brought back.
Bounds: ≤ 5 % of the window's picks to its endpoints, all of them picked again within 2 s.
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

from epp.bench.reliability.kubemode import kube_api_server, start_kube_epp
from epp.bench.reliability.serverfault import FaultResult, run_server_fault
from epp.bench.reliability.stack import Stack
from epp.bench.reliability.stageresult import Progress, RunConfig, StageResult

VARIANTS = (  # (fault, mode, built-in config)
    ("kill", "static", None),
    ("kill", "static", "reference-default"),
    ("kill", "kubernetes", None),
    ("freeze", "static", None),
)
CLIENTS = 32
MAX_SHARE = 0.05
BACK_WITHIN_S = 2.0


def run_variant(
    fault: str, mode: str, config: str | None, window_s: float, workdir: Path, progress: Progress
) -> FaultResult:
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        st = cleanup.enter_context(Stack(workdir))
        survivor, victim = st.sims(4), st.sims(4)
        args = ["--config-name", config] if config else []
        if mode == "kubernetes":
            api = kube_api_server()
            cleanup.callback(api.close)
            epp = start_kube_epp(st, api, [survivor, victim], *args)
        else:
            epp = st.epp(*args, static_endpoints=survivor.hostports + victim.hostports)
        gw = st.envoy(epp)
        return asyncio.run(
            run_server_fault(
                gw, epp, victim, fault=fault, clients=CLIENTS, warmup_s=3.0, window_s=window_s, progress=progress
            )
        )


def run(cfg: RunConfig, workdir: Path, progress: Progress) -> StageResult:
    res = StageResult(
        "kill",
        f"Model server killed / frozen under load ({CLIENTS} streaming clients, {cfg.fault_window_s:g} s window)",
    )
    for fault, mode, config in VARIANTS:
        label = f"{'kill -9' if fault == 'kill' else 'SIGSTOP'}, {mode}, {config or 'default config'}"
        progress(f"kill: {label}")
        try:
            r = run_variant(
                fault, mode, config, cfg.fault_window_s, workdir / f"{fault}-{mode}-{config or 'default'}", progress
            )
        except Exception as exc:  # one variant failing must not hide the others
            res.error = f"{label}: {exc}"
            res.notes.append(f"{label} failed: {exc}")
            continue
        res.check(
            f"{label}: picks to its 4 endpoints in the {r.window_s:g} s after",
            f"{r.picks_to_victim:,} of {r.picks_total:,} ({r.victim_share:.1%})",
            "≤ 5 %",
            r.victim_share <= MAX_SHARE,
        )
        res.figure(f"{label}: victim's share second by second", " ".join(f"{x:.0%}" for x in r.per_second_to_victim))
        back = "never" if r.back_all_s is None else f"{r.back_first_s:.2f} s (all 4: {r.back_all_s:.2f} s)"
        res.check(
            f"{label}: its endpoints picked again after its return",
            back,
            "≤ 2 s",
            r.back_all_s is not None and r.back_all_s <= BACK_WITHIN_S,
        )
        res.figure(
            f"{label}: client requests failed in the window / after the return",
            f"{r.failures_during} / {r.failures_after_back} (of {r.requests:,})",
        )
    res.notes.append(
        "Picks are counted from the EPP's inference_extension_scheduler_attempts_total{port} — "
        "what it chose, whether or not the server could answer. Failed client requests in the window "
        "are those in flight on the victim or picked before the EPP noticed it."
    )
    return res

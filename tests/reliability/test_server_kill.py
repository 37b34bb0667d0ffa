"""A model server killed under load is no black hole (issue 13, defect 1).

Two `epp-sim --replicas 4` processes behind the EPP and real Envoy (deploy/envoy/original-dst.yaml),
16 streaming clients; one process is killed with SIGKILL. Over the next 5 s (20 s in
`make bench-reliability`) at most 5 % of the EPP's picks may go to its four endpoints, and once
it is back on the same ports they are picked again within 2 s. Picks are read from the EPP's
per-endpoint counter, so a pick counts whether or not the dead server could answer it. The
Kubernetes variant keeps both pods Ready throughout, as a pod usually is for a while after its
server died.
"""

from __future__ import annotations

import asyncio

import pytest

from epp.bench.reliability.kubemode import start_kube_epp
from epp.bench.reliability.serverfault import run_server_fault

WINDOW_S = 5.0
MAX_SHARE = 0.05
BACK_WITHIN_S = 2.0


@pytest.mark.parametrize(
    "mode,config",
    [("static", None), ("static", "reference-default"), ("kubernetes", None)],
    ids=["static-default", "static-reference-default", "kubernetes-pod-still-ready"],
)
def test_killed_server_gets_no_picks_and_is_picked_again_when_back(stack, kubeapi, mode, config):
    survivor, victim = stack.sims(4), stack.sims(4)
    args = ["--config-name", config] if config else []
    if mode == "kubernetes":
        epp = start_kube_epp(stack, kubeapi, [survivor, victim], *args)
    else:
        epp = stack.epp(*args, static_endpoints=survivor.hostports + victim.hostports)
    gw = stack.envoy(epp)

    r = asyncio.run(
        run_server_fault(gw, epp, victim, fault="kill", clients=16, warmup_s=2.0, window_s=WINDOW_S, after_s=1.5)
    )

    assert r.picks_total >= 100, r  # enough load for the share to mean something
    assert r.picks_to_victim <= MAX_SHARE * r.picks_total, (
        f"{r.picks_to_victim} of {r.picks_total} picks went to the dead server's endpoints: {r}"
    )
    assert r.back_all_s is not None and r.back_all_s <= BACK_WITHIN_S, f"not back in rotation in time: {r}"
    assert r.failures_after_back == 0, r

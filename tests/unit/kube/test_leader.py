"""Leader election on a Lease: one ready replica, warm followers, hand-over on release and on crash."""

from __future__ import annotations

import contextlib
import time

from epp.ha.lease import lease_name
from epp.observability.health import NOT_SERVING, SERVING
from tests.support.kubeapi import LEASES, PODS, POOL_V1
from tests.unit.kube.conftest import FAST_LEASE, NS, kube_epp, pick, pod, pool, until

LEASE = lease_name(NS, "pool")


def elector(epp):
    return epp.sources[-1].elector


async def test_leader_hand_over_on_release_and_on_crash(kubeapi):
    kubeapi.create(POOL_V1, pool())
    for i in range(2):
        kubeapi.create(PODS, pod(f"vllm-{i}", f"10.0.0.{i + 1}"))
    async with contextlib.AsyncExitStack() as stack:
        a, _ch_a = await stack.enter_async_context(kube_epp(kubeapi, ha_enable_leader_election=True, identity="a"))
        await until(lambda: a.health.is_leader, what="first leader")
        b, ch_b = await stack.enter_async_context(kube_epp(kubeapi, ha_enable_leader_election=True, identity="b"))
        await until(lambda: len(b.datastore) == 2, what="follower datastore")
        await until(lambda: elector(b)._observed is not None, what="follower saw the lease")

        # Only the leader is ready; both are alive; the follower is warm (full datastore, can route).
        assert a.health.status("readiness") == SERVING and b.health.status("readiness") == NOT_SERVING
        assert b.health.status("liveness") == SERVING
        assert kubeapi.get(LEASES, NS, LEASE)["spec"]["holderIdentity"] == "a"
        assert a.metrics.registry.get_sample_value("epp_leader") == 1
        assert (await pick(ch_b))[0] == 200

        # Graceful hand-over: the leader releases the lease on shutdown.
        t0 = time.monotonic()
        await a.sources[-1].stop()
        await until(lambda: b.health.is_leader, timeout=5, what="follower takes over")
        graceful = time.monotonic() - t0  # includes the release round-trip
        assert b.health.status("readiness") == SERVING
        lease = kubeapi.get(LEASES, NS, LEASE)["spec"]
        assert lease["holderIdentity"] == "b" and lease["leaseTransitions"] >= 1

        # Crash: the leader stops renewing without releasing; the lease must expire first.
        c, ch_c = await stack.enter_async_context(kube_epp(kubeapi, ha_enable_leader_election=True, identity="c"))
        await until(lambda: len(c.datastore) == 2 and elector(c)._observed is not None)
        assert not c.health.is_leader
        t0 = time.monotonic()
        elector(b)._stop.set()  # the renew loop dies; nothing is released
        await until(lambda: c.health.is_leader, timeout=FAST_LEASE.lease_duration * 3, what="take-over after expiry")
        crash = time.monotonic() - t0
        assert crash >= FAST_LEASE.lease_duration * 0.8  # not before the lease could have expired
        assert (await pick(ch_c))[0] == 200
        elector(b).is_leader = False  # it "crashed": nothing to release at exit
        print(
            f"\nfailover: graceful {graceful * 1000:.0f} ms (retry period {FAST_LEASE.retry_period}s), "
            f"crash {crash * 1000:.0f} ms (lease {FAST_LEASE.lease_duration}s)"
        )
        assert graceful < FAST_LEASE.retry_period * 3

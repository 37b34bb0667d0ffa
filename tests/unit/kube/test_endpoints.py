"""Pool + pods from the (test) API server become endpoints; changes reach picks quickly."""

from __future__ import annotations

import asyncio
import time

from epp.datalayer.kube.informer import WatchTuning
from epp.observability.health import NOT_SERVING, SERVING
from tests.support.kubeapi import PODS, POOL_V1, POOL_V1ALPHA2, KubeApiServer
from tests.unit.kube.conftest import NS, kube_epp, names, pick, pod, pool, until


async def test_pool_with_three_ready_pods_gives_three_endpoints(kubeapi):
    kubeapi.create(POOL_V1, pool())
    for i in range(3):
        kubeapi.create(PODS, pod(f"vllm-{i}", f"10.0.0.{i + 1}"))
    kubeapi.create(PODS, pod("other", "10.0.1.1", labels={"app": "other"}))
    kubeapi.create(PODS, pod("starting", "10.0.0.9", ready=False))
    async with kube_epp(kubeapi) as (epp, ch):
        await until(lambda: epp.datastore.synced, what="first full list")
        assert names(epp) == {"vllm-0-rank-0", "vllm-1-rank-0", "vllm-2-rank-0"}
        ep = epp.datastore.get("vllm-1-rank-0")
        assert (ep.hostport, ep.pod_name, ep.namespace, ep.engine) == ("10.0.0.2:8000", "vllm-1", NS, "vllm")
        assert epp.health.status("") == SERVING
        status, dest, _ = await pick(ch)
        assert status == 200 and dest in {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}


async def test_two_target_ports_double_the_endpoints_and_annotations_and_engine_label_apply(kubeapi):
    kubeapi.create(POOL_V1, pool(ports=(8000, 8001)))
    for i in range(3):
        kubeapi.create(PODS, pod(f"vllm-{i}", f"10.0.0.{i + 1}"))
    kubeapi.create(
        PODS,
        pod(
            "dp",
            "10.0.0.7",
            labels={"app": "vllm", "inference.networking.k8s.io/engine-type": "sglang"},
            annotations={"inference.networking.k8s.io/active-ports": "8001"},
        ),
    )
    async with kube_epp(kubeapi) as (epp, _ch):
        await until(lambda: epp.datastore.synced)
        assert len(epp.datastore) == 7
        assert {e.hostport for e in epp.datastore.endpoints() if e.pod_name == "vllm-0"} == {
            "10.0.0.1:8000",
            "10.0.0.1:8001",
        }
        # Only the annotated port; the rank stays the port's index in the pool.
        dp = [e for e in epp.datastore.endpoints() if e.pod_name == "dp"]
        assert [(e.name, e.port, e.engine) for e in dp] == [("dp-rank-1", 8001, "sglang")]


async def test_not_synced_and_not_ready_until_the_pool_exists(kubeapi):
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    async with kube_epp(kubeapi) as (epp, _ch):
        await until(lambda: all(i.status.synced for i in epp.sources[0].informers[:2]), what="lists")
        assert not epp.datastore.synced and epp.health.status("") == NOT_SERVING
        kubeapi.create(POOL_V1, pool())
        await until(lambda: epp.datastore.synced)
        assert names(epp) == {"vllm-0-rank-0"}


async def test_pod_going_not_ready_or_deleted_stops_receiving_picks_within_a_second(kubeapi):
    kubeapi.create(POOL_V1, pool())
    for i in range(3):
        kubeapi.create(PODS, pod(f"vllm-{i}", f"10.0.0.{i + 1}"))
    async with kube_epp(kubeapi) as (epp, ch):
        await until(lambda: len(epp.datastore) == 3)
        kubeapi.update(PODS, pod("vllm-0", "10.0.0.1", ready=False))
        took = await until(lambda: "vllm-0-rank-0" not in names(epp), timeout=1.0, what="NotReady pod dropped")
        kubeapi.delete(PODS, NS, "vllm-1")
        took = max(
            took, await until(lambda: "vllm-1-rank-0" not in names(epp), timeout=1.0, what="deleted pod dropped")
        )
        dests = {(await pick(ch))[1] for _ in range(20)}
        assert dests == {"10.0.0.3:8000"}, dests
        # Terminating (deletionTimestamp set) counts as not ready too; then back to ready.
        terminating = pod("vllm-2", "10.0.0.3")
        terminating["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"
        kubeapi.update(PODS, terminating)
        await until(lambda: len(epp.datastore) == 0, timeout=1.0)
        waiting = asyncio.ensure_future(pick(ch))  # no endpoint: it waits in the EPP for one
        await until(lambda: epp.flow.queued == 1, timeout=1.0)
        kubeapi.update(PODS, pod("vllm-0", "10.0.0.1"))
        await until(lambda: names(epp) == {"vllm-0-rank-0"}, timeout=1.0)
        assert (await asyncio.wait_for(waiting, 5))[:2] == (200, "10.0.0.1:8000")
        assert took < 1.0


async def test_selector_and_target_port_changes_resync(kubeapi):
    kubeapi.create(POOL_V1, pool())
    kubeapi.create(PODS, pod("a-0", "10.0.0.1"))
    kubeapi.create(PODS, pod("b-0", "10.0.0.2", labels={"app": "vllm-b"}))
    async with kube_epp(kubeapi) as (epp, _ch):
        await until(lambda: names(epp) == {"a-0-rank-0"})
        kubeapi.update(POOL_V1, pool(selector={"app": "vllm-b"}))
        await until(lambda: names(epp) == {"b-0-rank-0"}, what="selector change")
        kubeapi.update(POOL_V1, pool(selector={"app": "vllm-b"}, ports=(9000, 9001)))
        await until(
            lambda: {e.hostport for e in epp.datastore.endpoints()} == {"10.0.0.2:9000", "10.0.0.2:9001"},
            what="targetPorts change",
        )
        # A pod relabelled into the pool joins it.
        kubeapi.update(PODS, pod("a-0", "10.0.0.1", labels={"app": "vllm-b"}))
        await until(lambda: len(epp.datastore) == 4)


async def test_pool_deletion_clears_endpoints_and_readiness(kubeapi):
    kubeapi.create(POOL_V1, pool())
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    async with kube_epp(kubeapi) as (epp, _ch):
        await until(lambda: epp.datastore.synced)
        kubeapi.delete(POOL_V1, NS, "pool")
        await until(lambda: len(epp.datastore) == 0 and not epp.datastore.synced)
        assert epp.health.status("") == NOT_SERVING
        kubeapi.create(POOL_V1, pool())
        await until(lambda: names(epp) == {"vllm-0-rank-0"} and epp.datastore.synced)


async def test_410_gone_during_a_deletion_relists_and_notices_it(kubeapi):
    kubeapi.create(POOL_V1, pool())
    for i in range(3):
        kubeapi.create(PODS, pod(f"vllm-{i}", f"10.0.0.{i + 1}"))
    async with kube_epp(kubeapi) as (epp, _ch):
        await until(lambda: len(epp.datastore) == 3)
        kubeapi.stop()  # the watch breaks...
        kubeapi.delete(PODS, NS, "vllm-1")  # ...a pod goes while we are away...
        kubeapi.create(PODS, pod("vllm-3", "10.0.0.4"))
        kubeapi.compact()  # ...and the history that would have told us is gone
        kubeapi.start()
        await until(lambda: names(epp) == {"vllm-0-rank-0", "vllm-2-rank-0", "vllm-3-rank-0"}, what="re-list")
        assert (
            epp.metrics.registry.get_sample_value(
                "epp_kubernetes_watch_restarts_total", {"resource": "pods", "reason": "expired"}
            )
            >= 1
        )
        # Watching resumes after the re-list.
        kubeapi.delete(PODS, NS, "vllm-0")
        await until(lambda: "vllm-0-rank-0" not in names(epp))


async def test_api_server_down_10s_keeps_endpoints_and_reports_staleness(kubeapi):
    kubeapi.create(POOL_V1, pool())
    for i in range(3):
        kubeapi.create(PODS, pod(f"vllm-{i}", f"10.0.0.{i + 1}"))
    async with kube_epp(kubeapi) as (epp, ch):
        await until(lambda: len(epp.datastore) == 3)
        source = epp.sources[0]
        kubeapi.stop()
        down_at = time.monotonic()
        await until(
            lambda: epp.metrics.registry.get_sample_value("epp_kubernetes_watch_up", {"resource": "pods"}) == 0,
            what="watch down",
        )
        while time.monotonic() - down_at < 10:
            # Still routing to what it knew, still ready, and saying how stale it is.
            assert len(epp.datastore) == 3 and epp.health.status("") == SERVING
            assert (await pick(ch))[0] == 200
            await asyncio.sleep(0.5)
        stale = epp.metrics.registry.get_sample_value("epp_kubernetes_watch_staleness_seconds", {"resource": "pods"})
        assert stale >= 9.0
        assert "serving last known state" in source.detail() and "pods watch down" in source.detail()
        assert "pods watch down" in epp.readiness_detail()  # what /readyz shows operators
        kubeapi.create(PODS, pod("vllm-3", "10.0.0.4"))  # changed during the outage
        kubeapi.start()
        await until(lambda: len(epp.datastore) == 4, timeout=5, what="catch-up after the outage")
        await until(lambda: source.stale_seconds == 0.0)
        assert source.detail() == "kubernetes: all watches connected"


async def test_stalled_watch_is_detected_and_reopened(kubeapi):
    kubeapi.create(POOL_V1, pool())
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    # No bookmarks from this server: the only sign of life is events, and they stop.
    async with kube_epp(
        kubeapi, tuning=WatchTuning(backoff_initial=0.1, backoff_max=0.5, stall_timeout=1.0, watch_timeout=(60, 60))
    ) as (epp, _ch):
        await until(lambda: len(epp.datastore) == 1)
        # The pods watch can deliver before the pool's watch has opened: stall both, once both are open.
        await until(lambda: kubeapi.watch_count() >= 2, what="pool and pods watches open")
        assert kubeapi.stall_watches() >= 2
        kubeapi.create(PODS, pod("vllm-1", "10.0.0.2"))  # not delivered on the stalled stream
        await until(lambda: len(epp.datastore) == 2, timeout=4, what="re-opened watch delivers the pod")
        assert (
            epp.metrics.registry.get_sample_value(
                "epp_kubernetes_watch_restarts_total", {"resource": "pods", "reason": "stalled"}
            )
            >= 1
        )


async def test_standalone_mode_watches_selected_pods_only():
    with KubeApiServer(resources=(PODS,)) as server:  # no CRDs installed at all
        server.create(PODS, pod("vllm-0", "10.0.0.1"))
        server.create(PODS, pod("other", "10.0.0.2", labels={"app": "other"}))
        async with kube_epp(server, pool_name="", endpoint_selector="app=vllm", endpoint_target_ports=[8000, 8002]) as (
            epp,
            _ch,
        ):
            await until(lambda: epp.datastore.synced)
            assert {e.hostport for e in epp.datastore.endpoints()} == {"10.0.0.1:8000", "10.0.0.1:8002"}
            assert any("labelSelector=app%3Dvllm" in path for _, path in server.requests)
            assert not any("inferencepools" in path for _, path in server.requests)


async def test_legacy_v1alpha2_pool_shape():
    with KubeApiServer() as server:
        server.create(
            POOL_V1ALPHA2,
            {
                "metadata": {"name": "pool", "namespace": NS},
                "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000, "extensionRef": {"name": "pool-epp"}},
            },
        )
        server.create(PODS, pod("vllm-0", "10.0.0.1"))
        async with kube_epp(server, pool_group="inference.networking.x-k8s.io") as (epp, _ch):
            await until(lambda: epp.datastore.synced)
            assert {e.hostport for e in epp.datastore.endpoints()} == {"10.0.0.1:8000"}


async def test_starts_without_an_api_server_and_syncs_once_it_appears():
    server = KubeApiServer()  # port chosen, nothing listening yet
    try:
        server.create(POOL_V1, pool())
        server.create(PODS, pod("vllm-0", "10.0.0.1"))
        async with kube_epp(server) as (epp, _ch):
            await asyncio.sleep(0.5)
            assert not epp.datastore.synced and epp.health.status("") == NOT_SERVING
            assert "pods watch down" in epp.sources[0].detail()
            server.start()
            await until(lambda: epp.datastore.synced and epp.sources[0].policy_kinds is not None, timeout=5)
            assert names(epp) == {"vllm-0-rank-0"}
    finally:
        server.close()

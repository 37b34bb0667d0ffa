"""InferenceObjective priorities (shedding) and InferenceModelRewrite splits, read from the API server."""

from __future__ import annotations

import asyncio
import math
import time

from epp.datalayer.endpoint import EndpointMetrics
from epp.datalayer.kube.policies import rewrite_rules_from_object
from epp.routing.rewrites import RewriteStore
from epp.scheduling import configs
from tests.support.kubeapi import OBJECTIVES, PODS, POOL_V1, REWRITES, KubeApiServer
from tests.unit.kube.conftest import NS, kube_epp, pick, pod, pool, until

POOL_REF = {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "pool"}


def objective(name: str, priority: int | None, pool_name: str = "pool") -> dict:
    spec = {"poolRef": POOL_REF | {"name": pool_name}}
    if priority is not None:
        spec["priority"] = priority
    return {"metadata": {"name": name, "namespace": NS}, "spec": spec}


def rewrite(name: str, rules: list[dict], created: str | None = None) -> dict:
    md = {"name": name, "namespace": NS}
    if created:
        md["creationTimestamp"] = created
    return {"metadata": md, "spec": {"poolRef": {"name": "pool"}, "rules": rules}}


def load(epp, queue: int) -> None:
    for ep in epp.datastore.endpoints():
        ep.metrics = EndpointMetrics(waiting_queue_size=queue, update_time=time.monotonic() + 3600)


async def test_negative_priority_is_shed_under_saturation_and_priority_2_is_not(kubeapi):
    kubeapi.create(POOL_V1, pool())
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    kubeapi.create(OBJECTIVES, objective("batch", -1))
    kubeapi.create(OBJECTIVES, objective("interactive", 2))
    kubeapi.create(OBJECTIVES, objective("elsewhere", -5, pool_name="another-pool"))
    # Legacy admission (no flow control) sheds; flow control queues instead (tests/unit/flowcontrol).
    async with kube_epp(kubeapi, configs.text("reference-default")) as (epp, ch):
        objectives = epp.director.objectives
        await until(lambda: objectives.priority("batch") == -1 and objectives.priority("interactive") == 2)
        assert objectives.priority("elsewhere") == 0  # another pool's objective is not ours

        load(epp, queue=50)  # saturated: queue far above the threshold of 5
        assert (await pick(ch, headers={"x-gateway-inference-objective": "batch"}))[0] == 429
        assert (await pick(ch, headers={"x-gateway-inference-objective": "interactive"}))[0] == 200
        assert (await pick(ch, headers={"x-gateway-inference-objective": "elsewhere"}))[0] == 200
        assert (
            epp.metrics.registry.get_sample_value(
                "inference_objective_request_total", {"model_name": "m1", "target_model_name": "m1", "priority": "2"}
            )
            == 1
        )

        load(epp, queue=0)  # idle: nobody is shed
        assert (await pick(ch, headers={"x-gateway-inference-objective": "batch"}))[0] == 200

        # Priority edits and deletions are followed.
        kubeapi.update(OBJECTIVES, objective("interactive", -3))
        await until(lambda: objectives.priority("interactive") == -3)
        kubeapi.delete(OBJECTIVES, NS, "batch")
        await until(lambda: objectives.priority("batch") == 0)
        load(epp, queue=50)
        assert (await pick(ch, headers={"x-gateway-inference-objective": "batch"}))[0] == 200


async def test_rewrite_with_50_50_weights_splits_1000_requests(kubeapi):
    kubeapi.create(POOL_V1, pool())
    kubeapi.create(PODS, pod("vllm-0", "10.0.0.1"))
    kubeapi.create(
        REWRITES,
        rewrite(
            "canary",
            [
                {
                    "matches": [{"model": {"type": "Exact", "value": "food-review"}}],
                    "targets": [
                        {"modelRewrite": "food-review-v1", "weight": 50},
                        {"modelRewrite": "food-review-v2", "weight": 50},
                    ],
                }
            ],
        ),
    )
    async with kube_epp(kubeapi) as (epp, ch):
        await until(lambda: epp.director.rewrites.lookup("food-review") is not None)
        counts = {"food-review-v1": 0, "food-review-v2": 0}
        n = 1000
        for _batch in range(n // 100):
            results = await asyncio.gather(*(pick(ch, model="food-review") for _ in range(100)))
            for status, _, model in results:
                assert status == 200
                counts[model] += 1
        # Binomial(1000, 0.5): sd = 15.8; 5 sd either side fails by chance about once in 3.5 million runs.
        assert abs(counts["food-review-v1"] - n / 2) < 5 * math.sqrt(n / 4), counts
        assert (
            epp.metrics.registry.get_sample_value(
                "inference_extension_model_rewrite_decisions_total",
                {"model_rewrite_name": "canary", "model_name": "food-review", "target_model": "food-review-v1"},
            )
            == counts["food-review-v1"]
        )
        # Models nothing matches pass through unchanged; deleting the rewrite stops it.
        assert (await pick(ch, model="other"))[2] == "other"
        kubeapi.delete(REWRITES, NS, "canary")
        await until(lambda: epp.director.rewrites.lookup("food-review") is None)
        assert (await pick(ch, model="food-review"))[2] == "food-review"


def test_rewrite_precedence_exact_over_generic_then_oldest_then_list_order():
    store = RewriteStore()
    for obj in (
        rewrite("generic-old", [{"targets": [{"modelRewrite": "catch-all"}]}], "2026-01-01T00:00:00Z"),
        rewrite(
            "exact-new",
            [{"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "new"}]}],
            "2026-06-01T00:00:00Z",
        ),
        rewrite(
            "exact-old",
            [
                {"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "first"}]},
                {"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "second"}]},
            ],
            "2026-03-01T00:00:00Z",
        ),
    ):
        store.replace(obj["metadata"]["name"], rewrite_rules_from_object(obj))
    assert store.lookup("m") == ("exact-old", "first")
    assert store.lookup("anything-else") == ("generic-old", "catch-all")
    # Targets without weights split uniformly (reference: total weight 0 -> uniform).
    store.replace("exact-old", [])
    store.replace(
        "exact-new",
        rewrite_rules_from_object(
            rewrite(
                "exact-new",
                [{"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "a"}, {"modelRewrite": "b"}]}],
            )
        ),
    )
    assert {store.lookup("m")[1] for _ in range(200)} == {"a", "b"}


async def test_policy_crds_are_not_watched_when_discovery_does_not_find_them():
    with KubeApiServer(resources=(PODS, POOL_V1)) as server:
        server.create(POOL_V1, pool())
        server.create(PODS, pod("vllm-0", "10.0.0.1"))
        async with kube_epp(server) as (epp, ch):
            await until(lambda: epp.datastore.synced and epp.sources[0].policy_kinds is not None)
            assert epp.sources[0].policy_kinds == set()
            assert (await pick(ch, headers={"x-gateway-inference-objective": "anything"}))[0] == 200
            assert not any("inferenceobjectives" in path for _, path in server.requests)

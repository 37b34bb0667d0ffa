"""Turn watched objects into datastore and policy-store state. Runs on the event loop only.

The informers hand over full listings (`replace_*`) and single events (`*_event`); both paths
end in the same per-pod or whole-pool computation, so a re-list after 410 Gone reconciles
exactly like a stream of events would have.
"""

from __future__ import annotations

import logging
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.kube.pods import pod_endpoints
from epp.datalayer.kube.policies import objective_from_object, refers_to_pool, rewrite_rules_from_object
from epp.datalayer.kube.pool import PoolError, PoolSpec, pool_from_object
from epp.routing.objectives import ObjectiveStore
from epp.routing.rewrites import RewriteStore

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class PoolReconciler:
    """Pool + pods -> endpoints. Synced (ready) once the pool is known and pods were fully listed."""

    def __init__(
        self,
        datastore: Datastore,
        pool_name: str,
        engine_label: str,
        default_engine: str,
        fixed_pool: PoolSpec | None = None,
    ) -> None:
        self.ds = datastore
        self.pool_name = pool_name
        self.engine_label, self.default_engine = engine_label, default_engine
        self.pool: PoolSpec | None = fixed_pool
        self.pods: dict[str, Obj] = {}
        self.pods_listed = False
        self._by_pod: dict[str, list[str]] = {}  # pod name -> its endpoint names in the datastore

    # ---- pool --------------------------------------------------------------------------------

    def replace_pools(self, objects: dict[str, Obj]) -> None:
        obj = objects.get(self.pool_name)
        self._set_pool(self._parse(obj) if obj is not None else None)

    def pool_event(self, typ: str, obj: Obj) -> None:
        if obj.get("metadata", {}).get("name") != self.pool_name:
            return
        self._set_pool(None if typ == "DELETED" else self._parse(obj))

    def _parse(self, obj: Obj) -> PoolSpec | None:
        try:
            return pool_from_object(obj)
        except (PoolError, KeyError, TypeError, ValueError) as exc:
            log.error("ignoring InferencePool %s: %s", self.pool_name, exc)
            return None

    def _set_pool(self, spec: PoolSpec | None) -> None:
        if spec == self.pool:
            return
        old, self.pool = self.pool, spec
        if spec is None:
            log.info("InferencePool %s is gone: dropping %d endpoints", self.pool_name, len(self.ds))
            self._by_pod.clear()
            self.ds.clear()  # also un-syncs: not ready without a pool, as the reference
            return
        if old is not None:
            log.info(
                "InferencePool %s changed (selector %s, ports %s): resyncing pods",
                self.pool_name,
                dict(spec.selector),
                list(spec.target_ports),
            )
        self._resync()

    # ---- pods --------------------------------------------------------------------------------

    def replace_pods(self, objects: dict[str, Obj]) -> None:
        self.pods = objects
        self.pods_listed = True
        self._resync()

    def pod_event(self, typ: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if typ == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = obj
        if self.pool is None or not self.pods_listed:
            return  # the resync when both are known covers it
        self._apply_pod(name, [] if typ == "DELETED" else self._endpoints(obj))

    def _endpoints(self, pod: Obj) -> list[Endpoint]:
        assert self.pool is not None
        try:
            return pod_endpoints(pod, self.pool, self.engine_label, self.default_engine)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed pod %s: %s", pod.get("metadata", {}).get("name"), exc)
            return []

    def _apply_pod(self, pod: str, eps: list[Endpoint]) -> None:
        keep = {ep.name for ep in eps}
        for name in self._by_pod.get(pod, []):
            if name not in keep:
                self.ds.remove(name)
        for ep in eps:
            self.ds.upsert(ep)
        if eps:
            self._by_pod[pod] = [ep.name for ep in eps]
        else:
            self._by_pod.pop(pod, None)

    def _resync(self) -> None:
        if self.pool is None or not self.pods_listed:
            return
        by_pod = {name: self._endpoints(pod) for name, pod in self.pods.items()}
        self.ds.replace_all(ep for eps in by_pod.values() for ep in eps)  # marks the datastore synced
        self._by_pod = {name: [ep.name for ep in eps] for name, eps in by_pod.items() if eps}


class _PolicyReconciler:
    """Shared by the policy CRDs: a full listing is replayed as events, vanished names as deletions."""

    names: set[str]

    def replace(self, objects: dict[str, Obj]) -> None:
        for name in self.names - set(objects):
            self.event("DELETED", {"metadata": {"name": name}})
        for obj in objects.values():
            self.event("MODIFIED", obj)

    def event(self, typ: str, obj: Obj) -> None:
        raise NotImplementedError


class ObjectiveReconciler(_PolicyReconciler):
    def __init__(self, store: ObjectiveStore, pool_name: str, pool_group: str) -> None:
        self.store, self.pool_name, self.pool_group = store, pool_name, pool_group
        self.names: set[str] = set()

    def event(self, typ: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        if typ != "DELETED" and refers_to_pool(obj, self.pool_name, self.pool_group):
            try:
                self.store.set(objective_from_object(obj))
                self.names.add(name)
                return
            except (TypeError, ValueError) as exc:
                log.warning("ignoring InferenceObjective %s: %s", name, exc)
        if name in self.names:
            self.store.remove(name)
            self.names.discard(name)


class RewriteReconciler(_PolicyReconciler):
    def __init__(self, store: RewriteStore, pool_name: str, pool_group: str) -> None:
        self.store, self.pool_name, self.pool_group = store, pool_name, pool_group
        self.names: set[str] = set()

    def event(self, typ: str, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        rules = []
        if typ != "DELETED" and refers_to_pool(obj, self.pool_name, self.pool_group):
            try:
                rules = rewrite_rules_from_object(obj)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("ignoring InferenceModelRewrite %s: %s", name, exc)
        self.store.replace(name, rules)
        if rules:
            self.names.add(name)
        else:
            self.names.discard(name)

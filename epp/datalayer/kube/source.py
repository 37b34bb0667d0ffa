"""The Kubernetes source: informers for the pool, its pods and (when served) objectives and rewrites.

Pool mode (--pool-name) watches the InferencePool by name and every pod in its namespace (the
selector is applied here, so a selector change needs no new watch). Standalone mode
(--endpoint-selector) watches only the selected pods, with the pool given by the flags.
InferenceObjective/InferenceModelRewrite are watched only if discovery finds them; discovery is
retried in the background until the API server answers, so a slow API server never blocks
start-up (or the event loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from kubernetes import client

from epp.datalayer.datastore import Datastore
from epp.datalayer.engines import DEFAULT_ENGINE
from epp.datalayer.kube.client import served_resources
from epp.datalayer.kube.informer import Informer, WatchTuning
from epp.datalayer.kube.pods import ENGINE_LABEL
from epp.datalayer.kube.pool import LEGACY_GROUP, PoolSpec, pool_version
from epp.datalayer.kube.reconcile import ObjectiveReconciler, PoolReconciler, RewriteReconciler
from epp.observability.metrics import EppMetrics
from epp.routing.objectives import ObjectiveStore
from epp.routing.rewrites import RewriteStore

log = logging.getLogger(__name__)

POLICY_GROUP, POLICY_VERSION = LEGACY_GROUP, "v1alpha2"


@dataclass
class KubeTargets:
    """Where the source writes; the runner's parts, passed explicitly so tests can build one too."""

    datastore: Datastore
    objectives: ObjectiveStore
    rewrites: RewriteStore
    metrics: EppMetrics | None = None
    engine_label: str = ENGINE_LABEL
    default_engine: str = DEFAULT_ENGINE


@dataclass
class KubeSource:
    api: client.ApiClient
    targets: KubeTargets
    namespace: str
    pool_name: str = ""  # pool mode
    pool_group: str = "inference.networking.k8s.io"
    standalone_pool: PoolSpec | None = None  # standalone mode
    tuning: WatchTuning = field(default_factory=WatchTuning)
    informers: list[Informer] = field(default_factory=list, init=False)
    policy_kinds: set[str] | None = field(default=None, init=False)  # discovered; None until known

    def __post_init__(self) -> None:
        t = self.targets
        self.pods = PoolReconciler(
            t.datastore,
            self.pool_name or (self.standalone_pool.name if self.standalone_pool else ""),
            t.engine_label,
            t.default_engine,
            fixed_pool=self.standalone_pool,
        )
        self.objectives = ObjectiveReconciler(t.objectives, self.pool_name, self.pool_group)
        self.rewrites = RewriteReconciler(t.rewrites, self.pool_name, self.pool_group)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._discovery: threading.Thread | None = None

    # ---- Source ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        core = client.CoreV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        ns = self.namespace
        if self.standalone_pool is not None:
            selector = ",".join(f"{k}={v}" for k, v in self.standalone_pool.selector)
            self._informer(
                "pods",
                lambda **kw: core.list_namespaced_pod(ns, **kw),
                self.pods.replace_pods,
                self.pods.pod_event,
                label_selector=selector,
            )
            return
        version = pool_version(self.pool_group)
        self._informer(
            "inferencepools",
            lambda **kw: custom.list_namespaced_custom_object(self.pool_group, version, ns, "inferencepools", **kw),
            self.pods.replace_pools,
            self.pods.pool_event,
            field_selector=f"metadata.name={self.pool_name}",
        )
        self._informer(
            "pods", lambda **kw: core.list_namespaced_pod(ns, **kw), self.pods.replace_pods, self.pods.pod_event
        )
        self._discovery = threading.Thread(target=self._discover, args=(custom,), name="kube-discovery", daemon=True)
        self._discovery.start()

    async def stop(self) -> None:
        self._stop.set()
        for inf in self.informers:
            inf.stop()
        await asyncio.to_thread(self._join)

    def _join(self) -> None:
        for inf in list(self.informers):
            inf.join(5)
        if self._discovery is not None:
            self._discovery.join(5)

    # ---- status ------------------------------------------------------------------------------

    def detail(self) -> str:
        """One line for readiness detail: which watches are down and for how long."""
        now = time.monotonic()
        down = [
            f"{i.status.resource} watch down {i.status.staleness(now):.1f}s ({i.status.last_error})"
            for i in self.informers
            if not i.status.connected
        ]
        if not down:
            return "kubernetes: all watches connected"
        return f"kubernetes: serving last known state; {'; '.join(down)}"

    @property
    def stale_seconds(self) -> float:
        now = time.monotonic()
        return max((i.status.staleness(now) for i in self.informers), default=0.0)

    # ---- internals ---------------------------------------------------------------------------

    def _informer(self, resource: str, list_fn, on_replace, on_event, **selectors: str) -> Informer:
        assert self._loop is not None
        m = self.targets.metrics
        inf = Informer(
            resource,
            list_fn,
            self._loop,
            on_replace,
            on_event,
            tuning=self.tuning,
            on_restart=(lambda r, why: m.kube_watch_restarts.labels(r, why).inc()) if m else None,
            **selectors,
        )
        if m is not None:
            st = inf.status
            m.kube_watch_up.labels(resource).set_function(lambda: 1.0 if st.connected else 0.0)
            m.kube_watch_staleness.labels(resource).set_function(st.staleness)
        self.informers.append(inf)
        inf.start()
        return inf

    def _discover(self, custom: client.CustomObjectsApi) -> None:
        """Find out (retrying until the API server answers) whether the policy CRDs are installed."""
        delay = self.tuning.backoff_initial
        failures = 0
        while not self._stop.is_set():
            try:
                kinds = served_resources(self.api, POLICY_GROUP, POLICY_VERSION, self.tuning.connect_timeout) or set()
                break
            except Exception as exc:  # unreachable: try again, like the informers do
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "discovery of %s/%s failed (retrying): %s", POLICY_GROUP, POLICY_VERSION, exc
                )
                self._stop.wait(delay)
                delay = min(self.tuning.backoff_max, delay * 2)
        else:
            return
        self.policy_kinds = kinds & {"inferenceobjectives", "inferencemodelrewrites"}
        log.info("policy CRDs served: %s", sorted(self.policy_kinds) or "none")
        assert self._loop is not None
        ns = self.namespace

        def lister(plural: str):
            return lambda **kw: custom.list_namespaced_custom_object(POLICY_GROUP, POLICY_VERSION, ns, plural, **kw)

        def start(resource: str, on_replace, on_event) -> None:
            if not self._stop.is_set():
                self._informer(resource, lister(resource), on_replace, on_event)

        if "inferenceobjectives" in self.policy_kinds:
            self._loop.call_soon_threadsafe(
                start, "inferenceobjectives", self.objectives.replace, self.objectives.event
            )
        if "inferencemodelrewrites" in self.policy_kinds:
            self._loop.call_soon_threadsafe(start, "inferencemodelrewrites", self.rewrites.replace, self.rewrites.event)

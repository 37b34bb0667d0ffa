"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's semantics.

- Acquire when the Lease is absent, released (empty holder), or not renewed for
  `lease_duration` as measured by *our* clock since we last saw it change (client-go does the same,
  so clock skew between replicas does not matter).
- Every write carries the resourceVersion we read: two candidates racing get one 409 Conflict.
- The leader renews every `retry_period`; if it cannot renew for `renew_deadline` it steps down.
- On stop the leader releases the Lease (holder "", duration 1 s: ReleaseOnCancel), so a
  follower takes over on its next try instead of waiting out the lease.

Only leadership is elected: every replica keeps its watches and scrapers running, so a new
leader starts with a full datastore and fresh metrics (warm standby).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

LEASE_SUFFIX = ".gateway-api-inference-extension.sigs.k8s.io"


def lease_name(namespace: str, name: str) -> str:
    return f"epp-{namespace}-{name}{LEASE_SUFFIX}"


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4()}"


@dataclass(frozen=True)
class LeaseTuning:
    lease_duration: float = 15.0  # controller-runtime defaults
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    request_timeout: float = 5.0


def _micro_time(t: float | None = None) -> str:
    d = dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[bool], None],
        identity: str | None = None,
        tuning: LeaseTuning = LeaseTuning(),
    ) -> None:
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.tuning = tuning
        self._loop, self._on_change = loop, on_change
        self.is_leader = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop and release the Lease if we hold it (blocking; call from a worker thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.tuning.request_timeout + self.tuning.retry_period + 1)
        if self.is_leader:
            try:
                self._release()
            except Exception as exc:
                log.warning("could not release lease %s: %s", self.name, exc)
            self._set_leader(False)

    # ---- loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self._try_acquire_or_renew()
            except Exception as exc:  # API server unreachable: as a failed renewal
                log.debug("lease %s: %s", self.name, exc)
                ok = False
            now = time.monotonic()
            if ok:
                self._last_renew = now
                if not self.is_leader:
                    log.info("became leader (lease %s, identity %s)", self.name, self.identity)
                    self._set_leader(True)
            elif self.is_leader and now - self._last_renew > self.tuning.renew_deadline:
                log.warning("lost leadership: lease %s not renewed for %.1fs", self.name, now - self._last_renew)
                self._set_leader(False)
            self._stop.wait(self.tuning.retry_period)

    def _set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        try:
            self._loop.call_soon_threadsafe(self._on_change, leader)
        except RuntimeError:  # loop closed during shutdown
            pass

    # ---- one attempt -------------------------------------------------------------------------

    def _get(self) -> dict[str, Any] | None:
        try:
            resp = self.coord.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self.tuning.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        # _preload_content=False returns the raw urllib3 response, not the V1Lease the stubs promise.
        return orjson.loads(resp.data)  # type: ignore[attr-defined]

    def _spec(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time()
        prev = (old or {}).get("spec") or {}
        mine = prev.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": round(self.tuning.lease_duration),
            "acquireTime": prev.get("acquireTime") if mine and prev.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": (prev.get("leaseTransitions") or 0) + (0 if mine or old is None else 1),
        }

    def _try_acquire_or_renew(self) -> bool:
        lease: Any = self._get()
        if lease is None:
            body: Any = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(None),
            }
            try:
                self.coord.create_namespaced_lease(
                    self.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self.tuning.request_timeout,
                )
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.tuning.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # someone else holds a live lease
        lease["spec"] = self._spec(lease)
        try:
            self.coord.replace_namespaced_lease(
                self.name,
                self.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self.tuning.request_timeout,
            )
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                return False
            raise
        return True

    def _release(self) -> None:
        lease: Any = self._get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time()}
        self.coord.replace_namespaced_lease(
            self.name,
            self.namespace,
            lease,
            _preload_content=False,
            _request_timeout=self.tuning.request_timeout,
        )
        log.info("released lease %s", self.name)


class LeaderElection:
    """The Source wrapper: runs the elector and mirrors leadership into health and metrics."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        health: Any,
        metrics: Any = None,
        identity: str | None = None,
        tuning: LeaseTuning = LeaseTuning(),
    ) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.health, self.metrics = health, metrics
        self.identity, self.tuning = identity, tuning
        self.elector: LeaderElector | None = None
        self.changes: list[tuple[float, bool]] = []  # (monotonic time, leader?) for tests and logs

    def _changed(self, leader: bool) -> None:
        self.health.is_leader = leader
        self.changes.append((time.monotonic(), leader))
        if self.metrics is not None:
            self.metrics.leader.set(1 if leader else 0)

    async def start(self) -> None:
        self.health.is_leader = False
        self.elector = LeaderElector(
            self.api, self.namespace, self.name, asyncio.get_running_loop(), self._changed, self.identity, self.tuning
        )
        self.elector.start()

    async def stop(self) -> None:
        if self.elector is not None:
            await asyncio.to_thread(self.elector.stop)
            self.health.is_leader = False

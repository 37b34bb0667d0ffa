"""The set of endpoints the EPP may route to.

Sources (static list, Kubernetes watches) write it; the hot path reads `endpoints()` once per
request, so that call returns a tuple cached until the next change: no copy, no lock.
Subscribers hear about additions and removals (the scrapers start/stop, the prefix index
forgets a server).

Writers may run on another thread (the Kubernetes client is synchronous), so mutations
take a lock; readers never do — swapping the cached tuple is a single reference store.
Callbacks run on the writer's thread, outside the lock; a subscriber living on an event
loop must hop onto it itself (MetricsCollector does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from epp.datalayer.endpoint import Endpoint

log = logging.getLogger(__name__)

Callback = Callable[[Endpoint], None]


def _same_target(a: Endpoint, b: Endpoint) -> bool:
    """Whether `b` is `a` with new metadata only (same place to send and scrape)."""
    return a.address == b.address and a.port == b.port and a.metrics_port == b.metrics_port


class Datastore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Endpoint] = {}
        self._by_hostport: dict[str, Endpoint] = {}
        self._snapshot: tuple[Endpoint, ...] = ()
        self._on_add: list[Callback] = []
        self._on_remove: list[Callback] = []
        self._synced = False

    # ---- reads (hot path) -------------------------------------------------------------

    def endpoints(self) -> tuple[Endpoint, ...]:
        """All endpoints, in insertion order. O(1): the tuple is rebuilt only on change."""
        return self._snapshot

    def get(self, name: str) -> Endpoint | None:
        return self._by_name.get(name)

    def by_hostport(self, hostport: str) -> Endpoint | None:
        """Look up by `ip:port` as it appears in `x-gateway-destination-endpoint`."""
        return self._by_hostport.get(hostport)

    def __len__(self) -> int:
        return len(self._snapshot)

    @property
    def synced(self) -> bool:
        """True once a source has delivered its first full listing."""
        return self._synced

    def mark_synced(self) -> None:
        self._synced = True

    # ---- subscriptions ----------------------------------------------------------------

    def subscribe(self, on_add: Callback | None = None, on_remove: Callback | None = None) -> Callable[[], None]:
        """Register callbacks; returns a function that unregisters them."""
        with self._lock:
            if on_add is not None:
                self._on_add.append(on_add)
            if on_remove is not None:
                self._on_remove.append(on_remove)

        def unsubscribe() -> None:
            with self._lock:
                if on_add is not None and on_add in self._on_add:
                    self._on_add.remove(on_add)
                if on_remove is not None and on_remove in self._on_remove:
                    self._on_remove.remove(on_remove)

        return unsubscribe

    # ---- writes -----------------------------------------------------------------------

    def upsert(self, ep: Endpoint) -> Endpoint:
        """Add `ep`, or update the stored endpoint of the same name; returns the stored one.

        A metadata-only change (labels, engine, pod name) is applied to the stored object in
        place, so its scraped metrics and in-flight load survive. A changed address or port
        is a different server: the old one is removed (subscribers hear it) and `ep` added.
        """
        removed: Endpoint | None = None
        with self._lock:
            old = self._by_name.get(ep.name)
            if old is not None and _same_target(old, ep):
                old.engine = ep.engine
                old.labels = ep.labels
                old.pod_name = ep.pod_name
                old.namespace = ep.namespace
                return old
            if old is not None:
                removed = old
                self._drop(old)
            self._by_name[ep.name] = ep
            self._by_hostport[ep.hostport] = ep
            self._rebuild()
            on_add, on_remove = list(self._on_add), list(self._on_remove)
        if removed is not None:
            self._notify(on_remove, removed)
        self._notify(on_add, ep)
        return ep

    def remove(self, name: str) -> Endpoint | None:
        with self._lock:
            old = self._by_name.get(name)
            if old is None:
                return None
            self._drop(old)
            self._rebuild()
            on_remove = list(self._on_remove)
        self._notify(on_remove, old)
        return old

    def replace_all(self, eps: Iterable[Endpoint]) -> None:
        """Make the store hold exactly `eps` (a full listing), then mark it synced."""
        eps = list(eps)
        keep = {ep.name for ep in eps}
        for name in [ep.name for ep in self._snapshot if ep.name not in keep]:
            self.remove(name)
        for ep in eps:
            self.upsert(ep)
        self.mark_synced()

    def clear(self) -> None:
        """Remove every endpoint (subscribers hear each removal) and reset `synced`."""
        with self._lock:
            gone = self._snapshot
            self._by_name.clear()
            self._by_hostport.clear()
            self._snapshot = ()
            self._synced = False
            on_remove = list(self._on_remove)
        for ep in gone:
            self._notify(on_remove, ep)

    # ---- internals --------------------------------------------------------------------

    def _drop(self, ep: Endpoint) -> None:
        del self._by_name[ep.name]
        if self._by_hostport.get(ep.hostport) is ep:
            del self._by_hostport[ep.hostport]
            # Another endpoint may share the host:port (misconfiguration); keep it findable.
            for other in self._by_name.values():
                if other.hostport == ep.hostport:
                    self._by_hostport[ep.hostport] = other
                    break

    def _rebuild(self) -> None:
        self._snapshot = tuple(self._by_name.values())

    @staticmethod
    def _notify(callbacks: list[Callback], ep: Endpoint) -> None:
        for cb in callbacks:
            try:
                cb(ep)
            except Exception:  # a broken subscriber must not break the source
                log.exception("datastore subscriber failed for endpoint %s", ep.name)

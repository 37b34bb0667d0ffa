"""List-then-watch one kind of object, in a background thread, the way client-go's reflector does.

- The first request is a full LIST; its `metadata.resourceVersion` is where the WATCH starts, so
  nothing between the two is missed.
- Every event moves the resourceVersion on; BOOKMARK events move it on without an object.
- A watch ending cleanly (server `timeoutSeconds`) is re-opened from the last resourceVersion.
- 410 Gone (an `ERROR` event or an HTTP 410): history is gone, so LIST again and hand over the
  whole set; the consumer reconciles, which is how deletions made while we were away are seen.
- Errors (API server down, 5xx) are retried with capped exponential backoff and jitter; the last
  good state is kept meanwhile (the consumer is never told "everything is gone").
- A watch that goes silent for longer than `stall_timeout` (no events, no bookmarks: a dead TCP
  connection, a wedged proxy) hits the socket read timeout and is re-opened.

The consumer's callbacks run on the event loop (`call_soon_threadsafe`), never on this thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kubernetes.client.rest import ApiException
from urllib3.exceptions import ReadTimeoutError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ListFn = Callable[..., Any]  # a kubernetes client list_* method bound to its namespace/resource


@dataclass(frozen=True)
class WatchTuning:
    backoff_initial: float = 0.8  # client-go reflector: 800 ms ...
    backoff_max: float = 30.0  # ... up to 30 s
    stall_timeout: float = 90.0  # API servers send bookmarks about once a minute
    watch_timeout: tuple[int, int] = (300, 600)  # server-side timeoutSeconds, randomised (client-go: 5-10 min)
    connect_timeout: float = 5.0
    list_timeout: float = 60.0


class Gone(Exception):
    """410: the resourceVersion we hold is older than the server's history."""


@dataclass
class WatchStatus:
    """What readiness detail and metrics report about one watch."""

    resource: str
    connected: bool = False
    synced: bool = False  # a full list has been delivered at least once
    last_contact: float = 0.0  # time.monotonic() of the last byte from the server
    down_since: float = 0.0  # monotonic time the current outage began (0 while connected)
    last_error: str = ""
    restarts: dict[str, int] = field(default_factory=dict)

    def staleness(self, now: float | None = None) -> float:
        """Seconds the state may be out of date: 0 while the watch is connected."""
        if self.connected:
            return 0.0
        since = self.last_contact or self.down_since
        return (time.monotonic() if now is None else now) - since if since else 0.0


class Informer:
    """One list/watch loop. `on_replace(objects_by_name)` after each LIST, `on_event(type, obj)` per change."""

    def __init__(
        self,
        resource: str,
        list_fn: ListFn,
        loop: asyncio.AbstractEventLoop,
        on_replace: Callable[[dict[str, Obj]], None],
        on_event: Callable[[str, Obj], None],
        *,
        label_selector: str = "",
        field_selector: str = "",
        tuning: WatchTuning = WatchTuning(),
        on_restart: Callable[[str, str], None] | None = None,
    ) -> None:
        self.status = WatchStatus(resource)
        self._list = list_fn
        self._loop = loop
        self._on_replace, self._on_event = on_replace, on_event
        self._selectors = {
            k: v for k, v in (("label_selector", label_selector), ("field_selector", field_selector)) if v
        }
        self.tuning = tuning
        self._on_restart = on_restart
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None
        self._rv: str | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.status.resource}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and unblock its read; `join` waits for it."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # urllib3 >= 2.3: wakes a read blocked in another thread
            except Exception:  # already closed, or an older urllib3
                pass

    def join(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._relist()
                self._watch()
                failures = 0  # a watch that ended cleanly (timeoutSeconds) is simply re-opened
            except Gone:
                self._restarted("expired")
                self._rv = None  # re-list at once: no backoff, the server is fine
            except ReadTimeoutError:
                if self._stop.is_set():
                    break
                self._restarted("stalled")
                log.warning(
                    "watch of %s was silent for %.0fs; reopening it", self.status.resource, self.tuning.stall_timeout
                )
            except Exception as exc:  # unreachable server, 5xx, a broken stream...
                if self._stop.is_set():
                    break
                failures += 1
                self._disconnected(exc)
                delay = min(self.tuning.backoff_max, self.tuning.backoff_initial * 2 ** (failures - 1))
                self._stop.wait(delay * random.uniform(0.8, 1.0))
        self._resp = None

    def _relist(self) -> None:
        try:
            resp = self._list(
                _preload_content=False,
                _request_timeout=(self.tuning.connect_timeout, self.tuning.list_timeout),
                **self._selectors,
            )
        except ReadTimeoutError:  # a slow LIST is an error to back off from, not a stalled watch
            raise TimeoutError(f"list of {self.status.resource} timed out") from None
        try:
            doc = orjson.loads(resp.data)
        finally:
            resp.release_conn()
        self._contact()
        self._rv = doc.get("metadata", {}).get("resourceVersion") or "0"
        items = {item["metadata"]["name"]: item for item in doc.get("items") or []}
        self._post(self._on_replace, items)
        self.status.synced = True

    def _watch(self) -> None:
        try:
            resp = self._list(
                watch=True,
                resource_version=self._rv,
                allow_watch_bookmarks=True,
                timeout_seconds=random.randint(*self.tuning.watch_timeout),
                _preload_content=False,
                _request_timeout=(self.tuning.connect_timeout, self.tuning.stall_timeout),
                **self._selectors,
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Gone() from None
            raise
        self._resp = resp
        try:
            if self._stop.is_set():
                return
            self._contact()
            buf = b""
            for chunk in resp.stream(None, decode_content=True):
                self._contact()
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._handle(orjson.loads(line))
        finally:
            self._resp = None
            resp.release_conn()

    def _handle(self, event: Obj) -> None:
        typ, obj = event.get("type"), event.get("object") or {}
        if typ == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv:
            self._rv = rv
        if typ in ("ADDED", "MODIFIED", "DELETED"):
            self._post(self._on_event, typ, obj)

    # ---- status ------------------------------------------------------------------------------

    def _contact(self) -> None:
        st = self.status
        st.last_contact = time.monotonic()
        if not st.connected:
            if st.down_since:
                log.info("watch of %s reconnected after %.1fs", st.resource, st.last_contact - st.down_since)
            st.connected, st.down_since, st.last_error = True, 0.0, ""

    def _disconnected(self, exc: Exception) -> None:
        st = self.status
        reason = exc.reason if isinstance(exc, ApiException) else type(exc).__name__
        if st.connected or not st.down_since:
            st.down_since = time.monotonic()
            log.warning(
                "watch of %s lost (%s: %s); keeping the last known state",
                st.resource,
                reason,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
            self._restarted("error")
        st.connected, st.last_error = False, f"{reason}"

    def _restarted(self, reason: str) -> None:
        self.status.restarts[reason] = self.status.restarts.get(reason, 0) + 1
        if self._on_restart is not None:
            self._on_restart(self.status.resource, reason)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if self._stop.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: we are shutting down
            self._stop.set()

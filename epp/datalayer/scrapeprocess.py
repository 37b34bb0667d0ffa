"""Scraping in a child process (`--metrics-scraper process`, the default).

Fetching and parsing a vLLM page costs about 0.5 ms of CPU; with 1,000 endpoints at the scrape
budget's 320 pages/s that is a third of a core, and on the EPP's own event loop every page
parsed is a pick that waits (issue 13: pick p99 11.9 ms at 1,000 endpoints, 5.1 ms with
scraping off). Here the pages are fetched and parsed by scrapechild.py; this side only applies
each outcome (a dict of a dozen fields, a few microseconds) through the same
CollectorBase.apply as the inline loop, so both decide identically.

The child is started at `start()`, told every endpoint (url, engine) and the effective
interval whenever it changes. If it dies it is started again (at most once a second) and told
everything again; meanwhile no page arrives, so the endpoints' metrics age as they would if
the servers stopped answering scrapes, without being counted as failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint
from epp.datalayer.scrape import ScrapeResult, scrape_url
from epp.datalayer.scrapechild import ADD, INTERVAL, REMOVE, ChildSettings
from epp.datalayer.scraper import CollectorBase
from epp.workers import ipc

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECONDS = 1.0
_SET_FIELDS = frozenset({"active_models", "waiting_models", "served_models"})


class ProcessCollector(CollectorBase):
    def __init__(self, datastore: Datastore, interval: float = 0.05, timeout: float = 1.0, **kw: Any) -> None:
        super().__init__(datastore, interval, timeout, **kw)
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._id_of: dict[Endpoint, int] = {}
        self._by_id: dict[int, Endpoint] = {}
        self._sent_interval = 0.0
        self._closing = False

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # ---- the child ----------------------------------------------------------------------

    async def _open(self) -> None:
        self._closing = False
        await self._spawn()
        self._pump = asyncio.get_running_loop().create_task(self._supervise(), name="scrape-process")

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = ChildSettings(
            interval=self._effective,
            timeout=self.timeout,
            backend=self.backend,
            max_page_bytes=self.max_page_bytes,
            insecure_skip_verify=self.insecure_skip_verify,
        )
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "epp.datalayer.scrapechild", str(theirs.fileno()), json.dumps(asdict(settings))],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._sent_interval = self._effective
        for ep in self._scraped:  # a restarted child learns every endpoint again
            self._send_add(ep)

    async def _supervise(self) -> None:
        while True:
            try:
                while self._reader is not None and (message := await ipc.read(self._reader)) is not None:
                    self._result(message)
            except (ConnectionError, ValueError) as e:
                log.warning("scrape process: %s", e)
            if self._closing:
                return
            self._writer = None
            proc = self._proc
            for _ in range(100):  # its socket closed: it is exiting, or has
                if proc is None or proc.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            if proc is not None and proc.poll() is None:
                proc.kill()  # alive but deaf: replace it
            log.warning(
                "the scrape process exited (status %s); starting another", None if proc is None else proc.wait()
            )
            self.restarts += 1
            await asyncio.sleep(RESTART_BACKOFF_SECONDS)
            if self._closing:
                return
            try:
                await self._spawn()
            except OSError as e:
                log.error("could not start the scrape process: %s; trying again", e)
                self._reader = None

    async def _close(self, endpoints: list[Endpoint]) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()  # the child reads the end of its socket and stops
            self._writer = None
        proc, self._proc = self._proc, None
        if proc is not None:
            deadline = time.monotonic() + 2.0
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        self._id_of.clear()
        self._by_id.clear()

    def _send(self, message: list[Any]) -> None:
        if self._writer is not None:
            self._writer.write(ipc.encode(message))

    def _send_add(self, ep: Endpoint) -> None:
        self._send([ADD, self._id_of[ep], scrape_url(ep.metrics_url, self.scheme), ep.engine])

    # ---- CollectorBase -----------------------------------------------------------------

    def _reschedule(self) -> None:
        super()._reschedule()
        if self._effective != self._sent_interval and self._writer is not None:
            self._sent_interval = self._effective
            self._send([INTERVAL, self._effective])

    def _begin(self, ep: Endpoint) -> None:
        eid = next(self._ids)
        self._id_of[ep] = eid
        self._by_id[eid] = ep
        self._send_add(ep)

    def _end(self, ep: Endpoint) -> None:
        eid = self._id_of.pop(ep, None)
        if eid is not None:
            self._by_id.pop(eid, None)
            self._send([REMOVE, eid])

    def _result(self, message: list[Any]) -> None:
        eid, kind, fields, why, warn, duration = message
        ep = self._by_id.get(eid)
        if ep is None:
            return  # removed while the page was on its way
        for name in _SET_FIELDS.intersection(fields):
            fields[name] = frozenset(fields[name])
        self.apply(ep, ScrapeResult(kind, fields, why, warn, duration))

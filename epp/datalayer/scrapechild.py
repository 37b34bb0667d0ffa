"""The scrape process (`--metrics-scraper process`, the default): fetches and parses model
servers' /metrics pages on its own core, so a pick never waits behind a page being parsed.

Started by scrapeprocess.ProcessCollector with one end of a Unix socket pair; it runs one
loop per endpoint the EPP tells it about and answers with each attempt's outcome. It keeps no
state worth saving: when the EPP goes, the socket ends and so does this process; when this
process dies, the EPP starts another and tells it the endpoints again.

Messages (msgpack, length-prefixed, epp.workers.ipc framing):
    EPP -> here:  [ADD, id, url, engine]   [REMOVE, id]   [INTERVAL, seconds]
    here -> EPP:  [id, kind, fields, why, warn, duration]   (scrape.ScrapeResult; sets as lists)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from epp.datalayer.fetch import Fetcher, make_fetcher
from epp.datalayer.scrape import ScrapeResult, scrape_loop
from epp.workers import ipc

ADD, REMOVE, INTERVAL = 1, 2, 3

log = logging.getLogger("epp.scrape")


@dataclass(frozen=True, slots=True)
class ChildSettings:
    """What the child is started with (json on its command line)."""

    interval: float
    timeout: float
    backend: str
    max_page_bytes: int
    insecure_skip_verify: bool


def wire_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """EndpointMetrics fields as msgpack carries them (frozensets become sorted lists)."""
    return {k: sorted(v) if isinstance(v, frozenset) else v for k, v in fields.items()}


class Scraper:
    def __init__(self, settings: ChildSettings, fetcher: Fetcher, writer: asyncio.StreamWriter) -> None:
        self.settings = settings
        self.interval = settings.interval
        self._fetcher = fetcher
        self._writer = writer
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def handle(self, message: list[Any]) -> None:
        op = message[0]
        if op == ADD:
            _, eid, url, engine = message
            if eid not in self._tasks:
                self._tasks[eid] = asyncio.get_running_loop().create_task(self._run(eid, url, engine))
        elif op == REMOVE:
            task = self._tasks.pop(message[1], None)
            if task is not None:
                task.cancel()
        elif op == INTERVAL:
            self.interval = float(message[1])

    async def _run(self, eid: int, url: str, engine: str) -> None:
        async def deliver(r: ScrapeResult) -> None:
            self._writer.write(ipc.encode([eid, r.kind, wire_fields(r.fields), r.why, r.warn, r.duration]))
            await self._writer.drain()

        await scrape_loop(self._fetcher, url, engine, self.settings.timeout, lambda: self.interval, deliver)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve(fd: int, settings: ChildSettings) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    fetcher = make_fetcher(
        settings.backend, max_bytes=settings.max_page_bytes, insecure_skip_verify=settings.insecure_skip_verify
    )
    scraper = Scraper(settings, fetcher, writer)
    try:
        while (message := await ipc.read(reader)) is not None:
            scraper.handle(message)
    except (ConnectionError, ValueError) as e:
        log.warning("scrape process: connection to the EPP failed: %s", e)
    finally:
        await scraper.close()
        await fetcher.aclose()
        writer.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The EPP decides when this process ends (it closes the socket); a Ctrl-C or hangup sent
    # to the whole process group is the EPP's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, settings = int(argv[0]), ChildSettings(**json.loads(argv[1]))
    asyncio.run(serve(fd, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

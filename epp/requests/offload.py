"""Large request bodies are parsed in a worker process, not on the event loop.

orjson holds the GIL, so a thread would not help: a 50 MB embeddings batch of token ids takes
about a second to parse and serialise for the prefix index (measured on this project's 2-core
box), and every other pick would wait behind it. Bodies of `OFFLOAD_BYTES` or more go to one
worker process instead; the event loop only copies bytes to it and back. The worker returns
what routing needs (model, API, stream flag, cache salt, prefix input), never the parsed
document, so nothing big is unpickled on the loop. The worker is started on first use, with
`spawn` (forking a process that runs gRPC threads is unsafe). If it dies, the body is parsed
inline and the next large body starts a new worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from epp.requests.body import ParsedRequest, parse_request

log = logging.getLogger(__name__)

OFFLOAD_BYTES = 1 << 20  # below this, parsing inline is faster than the round trip


def _parse_slim(raw: bytes, path: str | None) -> ParsedRequest:
    parsed = parse_request(raw, path)
    # The document and the body stay here: the caller has the body, and routing never reads the
    # document (it only asks whether there is one: passthrough has none).
    parsed.raw, parsed.data = b"", {}
    return parsed


class BodyParser:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def should_offload(self, raw: bytes) -> bool:
        return len(raw) >= OFFLOAD_BYTES

    async def parse(self, raw: bytes, path: str | None) -> ParsedRequest:
        """Parse in the worker; raises what parse_request raises (EppError for a bad body)."""
        loop = asyncio.get_running_loop()
        try:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            parsed = await loop.run_in_executor(self._pool, _parse_slim, raw, path)
        except BrokenProcessPool:
            log.warning("body parser worker died; parsing this body inline, restarting the worker next time")
            self.close()
            return parse_request(raw, path)
        parsed.raw = raw
        return parsed

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

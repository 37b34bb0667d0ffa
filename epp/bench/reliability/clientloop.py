"""One event loop, on its own thread, for every gRPC client a reliability run opens.

grpc.aio binds its completion queue to the loop it first runs on; a second `asyncio.run` in
the same process leaves callbacks aimed at a closed loop. The stages are synchronous code
(process control, hypothesis) that submit their gRPC work here instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="grpc-clients", daemon=True).start()
        return _loop


def run(coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
    """Run `coro` on the client loop and wait for its result (from any thread but that loop's)."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result(timeout)

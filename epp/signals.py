"""Which signals stop the EPP and which it shrugs off.

SIGHUP (a closed terminal, `kill -HUP` by habit to "reload") and SIGUSR1/SIGUSR2 terminate
a Python process by default; the EPP reloads nothing on them, so they are logged and ignored
rather than taking routing down. SIGTERM and SIGINT start the graceful drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("epp")

IGNORED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT)


def ignore_during_startup() -> None:
    """Before the event loop exists (imports, config): a stray signal must not kill start-up either."""
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)


def _ignored(sig: signal.Signals) -> None:
    log.info("received %s: ignored (the EPP reloads nothing; restart it to apply new flags or config)", sig.name)


def install(loop: asyncio.AbstractEventLoop, on_stop: Callable[[signal.Signals], None]) -> None:
    for sig in IGNORED:
        loop.add_signal_handler(sig, _ignored, sig)
    for sig in STOPPING:
        loop.add_signal_handler(sig, on_stop, sig)

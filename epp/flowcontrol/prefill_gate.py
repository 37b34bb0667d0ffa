"""`cold-prefill-gate` (this project's own): long cold prefills wait in the EPP, not in a server's queue.

A model server serves its waiting queue first come, first served. A request whose prompt no
server holds costs a long prefill (4,800 tokens: about half a second for an 8B model on an
H100). When a second one queues behind the first on the same server, every request that
arrives there afterwards, short cache-hot ones included, waits for both: one cold prompt
delays a whole server's traffic. The gate keeps such a request in the EPP instead while the
endpoint the scheduler chose already has `maxPerEndpoint` cold prefills outstanding (sent,
first response byte not back), and schedules it again when any cold prefill finishes. The
long jobs then queue where they block nobody and every other request goes straight through.

Nothing is lost: a held request is scheduled again at least every `recheck` seconds (new
endpoints, lost wake-ups), and after `maxWait` it is dispatched regardless. Requests below
`minTokens` uncached tokens are never held, so the gate costs nothing unless long uncached
prompts pile up.
"""

from __future__ import annotations

import asyncio
from collections import deque

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.duration import parse_duration
from epp.scheduling.plugin import Params, Plugin, register


class ColdPrefillGateParams(Params):
    min_tokens: int = Field(2048, alias="minTokens", ge=1)
    max_per_endpoint: int = Field(2, alias="maxPerEndpoint", ge=1)
    max_wait: str = Field("10s", alias="maxWait")
    recheck: str = Field("250ms", alias="recheck")


@register
class ColdPrefillGate(Plugin):
    type_name = "cold-prefill-gate"
    Params = ColdPrefillGateParams

    def __init__(self, name: str, params: ColdPrefillGateParams) -> None:
        super().__init__(name, params)
        self.min_tokens = params.min_tokens
        self.max_per_endpoint = params.max_per_endpoint
        self.max_wait = parse_duration(params.max_wait)
        self.recheck = parse_duration(params.recheck)
        self._waiters: deque[asyncio.Future[None]] = deque()

    # ---- decisions (hot path, synchronous) -------------------------------------------------

    def is_cold(self, uncached: int) -> bool:
        return uncached >= self.min_tokens

    def holds(self, endpoint: Endpoint, uncached: int, waited: float) -> bool:
        """True when this request should wait in the EPP rather than queue on `endpoint`."""
        return (uncached >= self.min_tokens and endpoint.inflight.cold_prefills >= self.max_per_endpoint
                and waited < self.max_wait)

    # ---- waiting -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, waited: float) -> None:
        """Until a cold prefill finishes somewhere, the recheck interval passes, or maxWait is reached."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, min(self.recheck, self.max_wait - waited)))
        except asyncio.TimeoutError:
            pass
        finally:
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def released(self) -> None:
        """A cold prefill finished: every held request gets to try again, oldest first."""
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)

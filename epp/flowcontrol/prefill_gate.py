"""`prefill-gate` (this project's own): long prefills wait in the EPP, not in a server's queue.

A model server serves its waiting queue first come, first served. A request with a long
uncached prompt costs a long prefill (4,800 tokens: about half a second for an 8B model on an
H100), and every request that reaches that server afterwards waits for it, short cache-hot ones
included. Once a request is in a server's queue it is bound there, however the fleet changes.
The gate keeps a request of at least `minTokens` uncached prompt tokens in the EPP while the
endpoint the scheduler chose already has `maxPerEndpoint` such prefills outstanding (sent,
first response byte not back), and schedules it again, oldest first, as soon as any of them
finishes: late binding, so the request goes where it is best served when it can be served.
While held, its tokens count as queued on the endpoint it wanted (`InflightLoad.held_tokens`),
so the scorer sees that endpoint's whole queue and spreads a prefix whose holder is swamped.

Nothing is lost: a held request is scheduled again at least every `recheck` (new endpoints,
lost wake-ups), and after `maxWait` it is dispatched regardless. Requests below `minTokens`
are never held, nor is a request with a single endpoint to go to.

This plugin decides; the waiting itself is the flow controller's (controller.py, "parked"):
one place where requests wait in the EPP.
"""

from __future__ import annotations

from pydantic import Field

from epp.datalayer.endpoint import Endpoint
from epp.duration import parse_duration
from epp.scheduling.plugin import Params, Plugin, register


class PrefillGateParams(Params):
    min_tokens: int = Field(1024, alias="minTokens", ge=1)
    max_per_endpoint: int = Field(2, alias="maxPerEndpoint", ge=1)
    max_wait: str = Field("10s", alias="maxWait")
    recheck: str = Field("250ms", alias="recheck")


@register
class PrefillGate(Plugin):
    type_name = "prefill-gate"
    Params = PrefillGateParams

    def __init__(self, name: str, params: PrefillGateParams) -> None:
        super().__init__(name, params)
        self.min_tokens = params.min_tokens
        self.max_per_endpoint = params.max_per_endpoint
        self.max_wait = parse_duration(params.max_wait)
        self.recheck = parse_duration(params.recheck)

    # ---- decisions (hot path, synchronous) -------------------------------------------------

    def is_long(self, uncached: int) -> bool:
        return uncached >= self.min_tokens

    def holds(self, endpoint: Endpoint, uncached: int, waited: float, choices: int) -> bool:
        """True when this request should wait in the EPP rather than queue on `endpoint`.

        `choices` is how many endpoints the request could go to. With one, waiting here cannot
        find it a better server (late binding needs an alternative); the server's own queue
        holds it as well, and keeps the request's place without a round trip per release."""
        return (
            choices > 1
            and uncached >= self.min_tokens
            and endpoint.inflight.long_prefills >= self.max_per_endpoint
            and waited < self.max_wait
        )

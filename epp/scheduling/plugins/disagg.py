"""Prefill/decode disaggregation: `disagg-profile-handler` with `prefix-based-pd-decider`.

The decode profile always runs and its endpoint is the destination; when the decider says the
uncached part of the prompt is worth moving, the prefill profile runs too and its endpoint is
passed to the decode server's sidecar in `x-prefiller-host-port` (llm-d wire format).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from epp.errors import EppError, ErrorCode
from epp.scheduling.plugin import Params, Plugin, ProfileHandler, register
from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY, PrefixMatchInfo
from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult

PREFILLER_HEADER = "x-prefiller-host-port"


class PrefixPdDeciderParams(Params):
    non_cached_tokens: int = Field(0, alias="nonCachedTokens", ge=0)


@register
class PrefixBasedPdDecider(Plugin):
    """Disaggregate iff the prompt tokens the decode endpoint does not hold reach `nonCachedTokens` (0 = never)."""

    type_name = "prefix-based-pd-decider"
    Params = PrefixPdDeciderParams

    def disaggregate(self, cycle: CycleState, req: SchedulingRequest, decode: ProfileResult) -> bool:
        threshold = self.params.non_cached_tokens
        if threshold <= 0 or not decode.targets:
            return False
        info: PrefixMatchInfo | None = cycle.get(PREFIX_MATCH_KEY)
        cached = 0
        if info is not None:
            cached = info.matches.get(decode.targets[0].name, 0) * info.block_size_tokens
        return req.prompt_tokens - cached >= threshold


@register
class AlwaysDisaggPdDecider(Plugin):
    type_name = "always-disagg-pd-decider"

    def disaggregate(self, cycle: CycleState, req: SchedulingRequest, decode: ProfileResult) -> bool:
        return True


class DisaggParams(Params):
    deciders: dict[str, str] = Field(default_factory=dict)
    decode_profile: str = Field("decode", alias="decodeProfile")
    prefill_profile: str = Field("prefill", alias="prefillProfile")


@register
class DisaggProfileHandler(ProfileHandler):
    type_name = "disagg-profile-handler"
    Params = DisaggParams

    def __init__(self, name: str, params: DisaggParams) -> None:
        super().__init__(name, params)
        self.decider: Any = None  # bound by the config loader from params.deciders["prefill"]

    def bind(self, plugins: dict[str, Plugin]) -> None:
        ref = self.params.deciders.get("prefill")
        if ref is not None:
            plugin = plugins.get(ref) or next((p for p in plugins.values() if p.type_name == ref), None)
            if plugin is None or not hasattr(plugin, "disaggregate"):
                raise ValueError(f"deciders.prefill: {ref!r} is not a configured P/D decider")
            self.decider = plugin

    def pick_profiles(
        self,
        cycle: CycleState,
        req: SchedulingRequest,
        profiles: dict[str, Any],
        results: dict[str, ProfileResult | None],
    ) -> dict[str, Any]:
        d, p = self.params.decode_profile, self.params.prefill_profile
        if d not in results:
            return {d: profiles[d]}
        decode = results[d]
        if (
            p in profiles
            and p not in results
            and decode is not None
            and self.decider is not None
            and self.decider.disaggregate(cycle, req, decode)
        ):
            return {p: profiles[p]}
        return {}

    def process_results(
        self, cycle: CycleState, req: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        d, p = self.params.decode_profile, self.params.prefill_profile
        decode = results.get(d)
        if decode is None or not decode.targets:
            raise EppError(ErrorCode.RESOURCE_EXHAUSTED, "failed to find target endpoint: no decode endpoint")
        result = SchedulingResult(results, d)
        prefill = results.get(p)
        if prefill is not None and prefill.targets and prefill.targets[0] is not decode.targets[0]:
            result.request_headers.append((PREFILLER_HEADER, prefill.targets[0].hostport))
        return result

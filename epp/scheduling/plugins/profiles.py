"""Profile handlers: which scheduling profiles run for a request, and which result is primary."""

from __future__ import annotations

from typing import Any

from epp.errors import EppError, ErrorCode
from epp.scheduling.plugin import ProfileHandler, register
from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult


@register
class SingleProfileHandler(ProfileHandler):
    type_name = "single-profile-handler"

    def pick_profiles(
        self,
        cycle: CycleState,
        req: SchedulingRequest,
        profiles: dict[str, Any],
        results: dict[str, ProfileResult | None],
    ) -> dict[str, Any]:
        return {} if results else dict(profiles)

    def process_results(
        self, cycle: CycleState, req: SchedulingRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        name, result = next(iter(results.items()))
        if result is None or not result.targets:
            raise EppError(
                ErrorCode.RESOURCE_EXHAUSTED, "failed to find target endpoint: no endpoint left after filters"
            )
        return SchedulingResult(results, name)

"""Filters that narrow the candidate endpoints."""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.scheduling.plugin import Filter, register
from epp.scheduling.types import CycleState, SchedulingRequest

TEST_SELECTION_HEADER = "test-epp-endpoint-selection"


@register
class HeaderBasedTestingFilter(Filter):
    """Conformance-test filter: keep endpoints named (IP or IP:port) in a request header; none if absent."""

    type_name = "header-based-testing-filter"

    def filter(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> list[Endpoint]:
        value = req.headers.get(TEST_SELECTION_HEADER, "")
        wanted = {v.strip() for v in value.split(",") if v.strip()}
        if not wanted:
            return []
        return [e for e in endpoints if e.address in wanted or e.hostport in wanted]

"""Admission without flow control: shed sheddable (priority < 0) requests when the pool is saturated."""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.errors import EppError, ErrorCode
from epp.flowcontrol.saturation import UtilizationDetector


class LegacyAdmission:
    def __init__(self, detector: UtilizationDetector) -> None:
        self.detector = detector

    def admit(self, priority: int, candidates: list[Endpoint]) -> None:
        if priority < 0 and self.detector.saturation(candidates) >= 1.0:
            raise EppError(ErrorCode.RESOURCE_EXHAUSTED, "system saturated, sheddable request dropped")

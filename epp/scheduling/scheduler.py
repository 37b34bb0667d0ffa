"""The scheduling cycle: producers, then profiles (filters -> weighted scorers -> picker), then results.

Synchronous on purpose: nothing in a cycle waits on I/O, so it runs inline on the request path.
"""

from __future__ import annotations

from epp.datalayer.endpoint import Endpoint
from epp.errors import EppError, ErrorCode
from epp.scheduling.config import LoadedConfig, Profile
from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult

SCORES_KEY = "scheduler/last-profile-scores"  # (endpoints, weighted totals) of the last profile run


class Scheduler:
    def __init__(self, config: LoadedConfig) -> None:
        self.config = config
        self.profiles = config.profiles
        self.handler = config.profile_handler
        self.producers = config.producers
        self.pre_request_plugins = config.pre_request

    def schedule(self, req: SchedulingRequest, candidates: list[Endpoint]) -> tuple[SchedulingResult, CycleState]:
        cycle = CycleState()
        for producer in self.producers:
            producer.produce(cycle, req, candidates)
        results: dict[str, ProfileResult | None] = {}
        # Profile handlers may run profiles in several rounds (e.g. decode, then maybe prefill).
        for _ in range(len(self.profiles) + 1):
            chosen = self.handler.pick_profiles(cycle, req, self.profiles, results)
            if not chosen:
                break
            for name, profile in chosen.items():
                results[name] = run_profile(profile, cycle, req, candidates)
        result = self.handler.process_results(cycle, req, results)
        return result, cycle

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        for plugin in self.pre_request_plugins:
            plugin.pre_request(cycle, req, result)


def run_profile(
    profile: Profile, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]
) -> ProfileResult | None:
    for f in profile.filters:
        endpoints = f.filter(cycle, req, endpoints)
        if not endpoints:
            return None
    n = len(endpoints)
    if n == 1 and profile.picker is not None and profile.picker.type_name == "max-score-picker":
        return ProfileResult([endpoints[0]])
    totals = [0.0] * n
    for scorer, weight in profile.scorers:
        if weight == 0:
            continue
        scores = scorer.score(cycle, req, endpoints)
        for i in range(n):
            s = scores[i]
            # Clamp to [0, 1]: one misbehaving scorer must not drown out the others.
            totals[i] += weight * (0.0 if s < 0 else 1.0 if s > 1 else s)
    if profile.picker is None:
        raise EppError(ErrorCode.INTERNAL, f"profile {profile.name!r} has no picker")
    cycle[SCORES_KEY] = (endpoints, totals)  # for a trace's top scores: two references, no copy
    return ProfileResult(profile.picker.pick(cycle, req, endpoints, totals))

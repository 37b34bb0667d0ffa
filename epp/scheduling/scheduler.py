"""The scheduling cycle: producers, then profiles (filters -> weighted scorers -> picker), then results.

Synchronous on purpose: nothing in a cycle waits on I/O, so it runs inline on the request path.
"""

from __future__ import annotations

from time import perf_counter

from epp.datalayer.endpoint import Endpoint
from epp.errors import EppError, ErrorCode
from epp.scheduling.config import LoadedConfig, Profile
from epp.scheduling.timing import PluginTimer
from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult

SCORES_KEY = "scheduler/last-profile-scores"  # (endpoints, weighted totals) of the last profile run
TIMER_KEY = "scheduler/plugin-timer"  # set on the cycles whose plugins are timed, for pre_request


class Scheduler:
    def __init__(self, config: LoadedConfig, plugin_timer: PluginTimer | None = None) -> None:
        self.config = config
        self.plugin_timer = plugin_timer
        self.profiles = config.profiles
        self.handler = config.profile_handler
        self.producers = config.producers
        self.pre_request_plugins = config.pre_request

    def schedule(self, req: SchedulingRequest, candidates: list[Endpoint]) -> tuple[SchedulingResult, CycleState]:
        cycle = CycleState()
        timer = self.plugin_timer.sample() if self.plugin_timer is not None else None
        if timer is not None:
            cycle[TIMER_KEY] = timer
        for producer in self.producers:
            t0 = perf_counter()
            producer.produce(cycle, req, candidates)
            if timer is not None:
                timer.observe("PrepareData", producer, t0)
        results: dict[str, ProfileResult | None] = {}
        # Profile handlers may run profiles in several rounds (e.g. decode, then maybe prefill).
        for _ in range(len(self.profiles) + 1):
            chosen = self.handler.pick_profiles(cycle, req, self.profiles, results)
            if not chosen:
                break
            for name, profile in chosen.items():
                results[name] = run_profile(profile, cycle, req, candidates, timer)
        result = self.handler.process_results(cycle, req, results)
        return result, cycle

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        timer = cycle.get(TIMER_KEY)
        for plugin in self.pre_request_plugins:
            t0 = perf_counter()
            plugin.pre_request(cycle, req, result)
            if timer is not None:
                timer.observe("PreRequest", plugin, t0)


def run_profile(
    profile: Profile,
    cycle: CycleState,
    req: SchedulingRequest,
    endpoints: list[Endpoint],
    timer: PluginTimer | None = None,
) -> ProfileResult | None:
    for f in profile.filters:
        t0 = perf_counter()
        endpoints = f.filter(cycle, req, endpoints)
        if timer is not None:
            timer.observe("Filter", f, t0)
        if not endpoints:
            return None
    n = len(endpoints)
    if n == 1 and profile.picker is not None and profile.picker.type_name == "max-score-picker":
        return ProfileResult([endpoints[0]])
    totals: list[float] | None = None
    for scorer, weight in profile.scorers:
        if weight == 0:
            continue
        t0 = perf_counter()
        scores = scorer.score(cycle, req, endpoints)
        if timer is not None:
            timer.observe("Scorer", scorer, t0)
        if len(scores) != n:
            raise ValueError(f"scorer {scorer.name!r} returned {len(scores)} scores for {n} endpoints")
        if not scorer.scores_in_unit_range:
            # Clamp to [0, 1]: one misbehaving scorer must not drown out the others.
            scores = [0.0 if s < 0 else 1.0 if s > 1 else s for s in scores]
        # The first scorer's weighted scores are the totals (a profile of one scorer at weight
        # 1, the default's, uses its list as is): the same sums as adding to zeros.
        if totals is None:
            totals = scores if weight == 1 else [weight * s for s in scores]
        else:
            totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
    if totals is None:
        totals = [0.0] * n
    if profile.picker is None:
        raise EppError(ErrorCode.INTERNAL, f"profile {profile.name!r} has no picker")
    cycle[SCORES_KEY] = (endpoints, totals)  # for a trace's top scores: two references, no copy
    t0 = perf_counter()
    picked = profile.picker.pick(cycle, req, endpoints, totals)
    if timer is not None:
        timer.observe("Picker", profile.picker, t0)
    return ProfileResult(picked)

"""Ordering policies: which request of one flow goes first (the reference's names and maths).

A policy is a sort key. Each flow queue is a heap on it, so every policy costs O(log n) per
request; FCFS on a heap is exact by enqueue time, not approximate as a list is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from epp.flowcontrol.ticket import Ticket
from epp.scheduling.plugin import Plugin, register

FAR_FUTURE = math.inf
SLO_HEADERS = ("x-slo-ttft-ms", "x-llm-d-slo-ttft-ms")


class OrderingPolicy(Plugin):
    def key(self, ticket: Ticket, ttl: float) -> tuple:
        """Smaller goes first. `ttl` is the request's effective TTL (0: none)."""
        raise NotImplementedError


@register
class FcfsOrdering(OrderingPolicy):
    type_name = "fcfs-ordering-policy"

    def key(self, ticket: Ticket, ttl: float) -> tuple:
        return (ticket.enqueued, ticket.seq)


@register
class EdfOrdering(OrderingPolicy):
    """Earliest deadline first, deadline = enqueue time + TTL; no TTL = far future; ties FCFS."""

    type_name = "edf-ordering-policy"

    def key(self, ticket: Ticket, ttl: float) -> tuple:
        deadline = ticket.enqueued + ttl if ttl > 0 else FAR_FUTURE
        return (deadline, ticket.enqueued, ticket.seq)


@register
class SloDeadlineOrdering(OrderingPolicy):
    """Deadline = arrival + the client's TTFT objective in ms (header); none or invalid = far future."""

    type_name = "slo-deadline-ordering-policy"

    def key(self, ticket: Ticket, ttl: float) -> tuple:
        return (ticket.slo_deadline, ticket.enqueued, ticket.seq)


def slo_deadline(headers: Mapping[str, str], arrival: float) -> float:
    for name in SLO_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            ms = float(raw)
        except ValueError:
            return FAR_FUTURE
        if not math.isfinite(ms) or ms < 0:
            return FAR_FUTURE
        return arrival + ms / 1000.0
    return FAR_FUTURE

"""Per-publisher sequence numbers: what a batch's number says about the stream.

vLLM numbers the batches of each publisher process from 0, so on the live socket
* the next number (last + 1) is the normal case;
* a jump forward means batches were lost (the PUB high-water mark, a slow joiner, a blip);
* a number at or below the last one after a larger one means the engine restarted (its
  cache is empty and its numbers started over) — except the very same number, a duplicate;
* a first batch numbered above 0 means this subscriber joined a stream already running.
"""

from __future__ import annotations

from enum import Enum


class Seq(str, Enum):
    NEXT = "next"
    GAP = "gap"
    RESET = "reset"
    DUPLICATE = "duplicate"
    LATE_JOIN = "late-join"
    FIRST = "first"


class SeqTracker:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: int | None = None

    def classify(self, seq: int) -> Seq:
        last = self.last
        if last is None:
            return Seq.FIRST if seq == 0 else Seq.LATE_JOIN
        if seq == last + 1:
            return Seq.NEXT
        if seq > last + 1:
            return Seq.GAP
        if seq == last:
            return Seq.DUPLICATE
        return Seq.RESET

    def advance(self, seq: int) -> None:
        self.last = seq

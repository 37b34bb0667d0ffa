"""`inference_extension_prefix_indexer_memory_bytes` tells the truth: the prefix index's
`memory_bytes` against what tracemalloc counts while a real index is filled (a few
thousand entries, with and without shared blocks, with eviction and endpoint removal)."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from epp.scheduling.plugins.prefix_index import PrefixIndex


def _requests(endpoints: int, shared: int, count: int, seed: int = 1):
    """(endpoint, block hashes) per request, made lazily so the hash ints are allocated while
    memory is traced (the index keeps them; the lists die after each add): a random-length
    slice of `shared` common blocks (a system prompt several endpoints end up holding), then
    blocks of its own."""
    rng = random.Random(seed)
    names = [f"10.0.0.{i}:8000" for i in range(endpoints)]
    common = [rng.getrandbits(64) for _ in range(shared)]
    for i in range(count):
        yield (
            names[i % endpoints],
            common[: rng.randrange(0, shared + 1)] + [rng.getrandbits(64) for _ in range(rng.randrange(1, 30))],
        )


def _measured(index: PrefixIndex, requests, remove: str = "") -> int:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for endpoint, hashes in requests:  # the generator runs here, traced
            index.add(endpoint, hashes)
        if remove:
            index.remove_endpoint(remove)
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "endpoints,shared,count,capacity",
    [
        (1, 0, 300, 100_000),  # every block has one holder
        (4, 200, 400, 100_000),  # some blocks held by several endpoints
        (32, 300, 640, 100_000),  # a big pool sharing a system prompt
        (32, 3000, 200, 100_000),  # every block held by many endpoints: big holder sets
        (8, 100, 3000, 500),  # LRU eviction churning the tables
    ],
)
def test_memory_estimate_matches_what_is_allocated(endpoints, shared, count, capacity):
    index = PrefixIndex(capacity)
    used = _measured(index, _requests(endpoints, shared, count))
    assert len(index) > 2000
    assert index.memory_bytes == pytest.approx(used, rel=0.05), (
        f"{len(index)} entries: estimate {index.memory_bytes} B, allocated {used} B"
    )


def test_estimate_follows_endpoint_removal():
    index = PrefixIndex(100_000)
    used = _measured(index, _requests(4, 200, 400), remove="10.0.0.0:8000")
    assert index.endpoints() == {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}
    assert index.memory_bytes == pytest.approx(used, rel=0.05)
    # Emptied, the index keeps its tables' memory (dicts do not shrink): still reported.
    index = PrefixIndex(100_000)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for endpoint, hashes in _requests(4, 200, 400):
            index.add(endpoint, hashes)
        for name in sorted(index.endpoints()):
            index.remove_endpoint(name)
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(index) == 0
    assert index.memory_bytes == pytest.approx(used, rel=0.05)

"""The approximate prefix index against a plain model of it: per endpoint an LRU of block
hashes, and a match is how many leading blocks each endpoint holds. Any sequence of adds
(shared and private blocks, small capacities so eviction churns), endpoint removals and
lookups must agree, whatever representation the index uses for who holds a hash."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.scheduling.plugins.prefix_index import PrefixIndex

ENDPOINTS = ["a", "b", "c", "d"]
blocks = st.lists(st.integers(0, 12), min_size=0, max_size=10)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(ENDPOINTS), blocks, st.integers(0, 6)),
        st.tuples(st.just("remove"), st.sampled_from(ENDPOINTS)),
        st.tuples(st.just("match"), blocks),
    ),
    max_size=60,
)


class Model:
    def __init__(self, default_capacity: int) -> None:
        self.default = default_capacity
        self.lru: dict[str, OrderedDict[int, None]] = {}

    def add(self, endpoint: str, hashes: list[int], capacity: int) -> None:
        lru = self.lru.setdefault(endpoint, OrderedDict())
        for h in hashes:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > (capacity or self.default):
            lru.popitem(last=False)

    def match(self, hashes: list[int]) -> dict[str, int]:
        out = {}
        for name, lru in self.lru.items():
            n = 0
            while n < len(hashes) and hashes[n] in lru:
                n += 1
            if n:
                out[name] = n
        return out


@settings(max_examples=400, deadline=None)
@given(ops)
def test_the_index_answers_as_per_endpoint_lrus_do(operations):
    index, model = PrefixIndex(5), Model(5)
    for op in operations:
        if op[0] == "add":
            _, endpoint, hashes, capacity = op
            index.add(endpoint, hashes, capacity)
            model.add(endpoint, hashes, capacity)
        elif op[0] == "remove":
            index.remove_endpoint(op[1])
            model.lru.pop(op[1], None)
        else:
            assert index.match(op[1]) == model.match(op[1])
        assert len(index) == sum(len(lru) for lru in model.lru.values())
    for h in range(13):  # every hash still answered by exactly its holders
        assert index.match([h]) == model.match([h])
    for name in list(model.lru):
        index.remove_endpoint(name)
    assert index.match(list(range(13))) == {}
    assert index._set_bytes == 0  # every shared holder set accounted for as it went


def test_a_block_shared_and_then_left_by_one_holder_goes_back_to_a_single_holder():
    index = PrefixIndex(2)
    index.add("a", [1, 2])
    index.add("b", [1])
    assert index.match([1, 2]) == {"a": 2, "b": 1}
    index.add("a", [3, 4])  # a evicts 1 and 2
    assert index.match([1]) == {"b": 1}
    index.add("c", [1])
    assert index.match([1]) == {"b": 1, "c": 1}

"""The precise index: own keys from events, reference counts, tiers, clears, memory bound."""

import itertools
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datalayer.kvevents.decode import Cleared, Removed, Stored
from epp.datalayer.kvevents.index import KVBlockIndex
from epp.datalayer.kvevents.keys import chain_keys, request_keys, root_key

BS = 4
MODEL = "m"
PROMPT = list(range(100, 124))  # 6 blocks of 4


def index(**kw) -> KVBlockIndex:
    ix = KVBlockIndex(block_size=BS, **kw)
    for name in ("a", "b"):
        ix.add_endpoint(name, MODEL)
    return ix


def stored(hashes, parent, tokens, **kw) -> Stored:
    return Stored(tuple(hashes), parent, tokens, BS, **kw)


def test_keys_do_not_depend_on_engine_hashes():
    ix = index()
    # Two servers with different hash seeds: different engine hashes for the same tokens.
    ix.apply("a", [stored([1, 2, 3], None, PROMPT[:12])])
    ix.apply("b", [stored([901, 902], None, PROMPT[:8])])
    keys = request_keys(MODEL, PROMPT, BS)
    assert ix.match(keys) == {"a": 3.0, "b": 2.0}


def test_continuation_resolves_its_parent_through_the_bridge():
    ix = index()
    ix.apply("a", [stored([1, 2], None, PROMPT[:8])])
    ix.apply("a", [stored([3, 4], 2, PROMPT[8:16])])
    assert ix.match(request_keys(MODEL, PROMPT, BS)) == {"a": 4.0}


def test_orphan_store_is_dropped():
    ix = index()
    ix.apply("a", [stored([3, 4], 99, PROMPT[8:16])])
    assert len(ix) == 0 and ix.counters.orphans == 1


def test_duplicate_stores_need_as_many_removes():
    ix = index()
    ev = stored([1, 2], None, PROMPT[:8])
    ix.apply("a", [ev, ev])
    keys = request_keys(MODEL, PROMPT, BS)
    ix.apply("a", [Removed((2,))])
    assert ix.match(keys) == {"a": 2.0}  # one copy of block 2 is still there
    ix.apply("a", [Removed((2,))])
    assert ix.match(keys) == {"a": 1.0}
    ix.apply("a", [Removed((2,)), Removed((1,))])  # a remove too many is ignored
    assert ix.match(keys) == {"a": 1.0}
    ix.apply("a", [Removed((1,))])
    assert ix.match(keys) == {}
    assert ix.blocks_of("a") == 0


def test_eviction_of_a_middle_block_truncates_the_match():
    ix = index()
    ix.apply("a", [stored([1, 2, 3], None, PROMPT[:12])])
    ix.apply("a", [Removed((2,))])
    assert ix.match(request_keys(MODEL, PROMPT, BS)) == {"a": 1.0}


def test_tiers_cpu_copy_weighs_less_and_survives_gpu_eviction():
    ix = index()
    ix.apply("a", [stored([1, 2], None, PROMPT[:8])])
    ix.apply("a", [Stored((1, 2), None, [], BS, tier="cpu")])  # offload copy: no tokens
    keys = request_keys(MODEL, PROMPT, BS)
    assert ix.match(keys) == {"a": 2.0}  # GPU is the best tier for both
    ix.apply("a", [Removed((2,), "gpu")])
    assert ix.match(keys) == {"a": 1.8}  # block 2 only on CPU now
    ix.apply("a", [Removed((2,), "cpu")])
    assert ix.match(keys) == {"a": 1.0}


def test_lora_and_salt_are_part_of_the_key():
    ix = index()
    ix.apply("a", [stored([1, 2], None, PROMPT[:8], lora_name="sql")])
    assert ix.match(request_keys(MODEL, PROMPT, BS)) == {}
    assert ix.match(request_keys("sql", PROMPT, BS)) == {"a": 2.0}
    ix.apply("b", [stored([5, 6], None, PROMPT[:8], extra_keys=(("s1",), None))])
    assert ix.match(request_keys(MODEL, PROMPT, BS, cache_salt="s1")) == {"b": 2.0}
    assert ix.match(request_keys(MODEL, PROMPT, BS, cache_salt="s2")) == {}


def test_all_blocks_cleared_and_endpoint_removal_clear_only_that_endpoint():
    ix = index()
    for name in ("a", "b"):
        ix.apply(name, [stored([1, 2], None, PROMPT[:8])])
    keys = request_keys(MODEL, PROMPT, BS)
    ix.apply("a", [Cleared()])
    assert ix.match(keys) == {"b": 2.0}
    ix.apply("a", [stored([1], None, PROMPT[:4])])
    assert ix.match(keys) == {"b": 2.0, "a": 1.0}
    ix.remove_endpoint("b")
    assert ix.match(keys) == {"a": 1.0} and len(ix) == 1
    ix.add_endpoint("c", MODEL)  # reuses b's slot, starts empty
    assert ix.match(keys) == {"a": 1.0}


def test_a_block_size_that_does_not_divide_ours_is_counted_not_misindexed():
    ix = index()
    ix.apply("a", [Stored((1,), None, PROMPT[:6], 6)])  # 6 vs our 4: no alignment
    assert len(ix) == 0 and ix.counters.size_mismatch == 1


def test_coarser_engine_blocks_are_several_of_our_keys():
    ix = index()
    # The engine's blocks are 8 tokens, ours 4: each engine block is two of our keys.
    ix.apply("a", [Stored((1, 2), None, PROMPT[:16], 8)])
    keys = request_keys(MODEL, PROMPT, BS)
    assert ix.match(keys) == {"a": 4.0}
    ix.apply("a", [Stored((3,), 2, PROMPT[16:24], 8)])  # a continuation chains from the last key
    assert ix.match(keys) == {"a": 6.0}
    ix.apply("a", [Removed((2,))])  # the engine evicts one block: both of its keys go
    assert ix.match(keys) == {"a": 2.0}
    assert ix.counters.size_mismatch == 0


def test_finer_engine_blocks_complete_our_key_with_the_last_of_them():
    ix = KVBlockIndex(block_size=8)
    ix.add_endpoint("a", MODEL)
    keys = request_keys(MODEL, PROMPT, 8)  # 3 of our blocks
    # The engine's blocks are 4 tokens: 3 of them = one of ours and half the next.
    ix.apply("a", [Stored((1, 2, 3), None, PROMPT[:12], 4)])
    assert ix.match(keys) == {"a": 1.0}
    # The next event completes our second block from the half its parent left.
    ix.apply("a", [Stored((4,), 3, PROMPT[12:16], 4)])
    assert ix.match(keys) == {"a": 2.0}
    # Another continuation from the same half block: another key, sharing engine block 3.
    other = [*PROMPT[:12], 7, 7, 7, 7]
    ix.apply("a", [Stored((14,), 3, other[12:16], 4)])
    assert ix.match(request_keys(MODEL, other, 8)) == {"a": 2.0}
    # Evicting engine block 3 breaks both of our blocks that contain it.
    ix.apply("a", [Removed((3,))])
    assert ix.match(keys) == {"a": 1.0} and ix.match(request_keys(MODEL, other, 8)) == {"a": 1.0}
    # ...and removing the rest leaves nothing behind.
    ix.apply("a", [Removed((1, 2, 4, 14))])
    assert ix.match(keys) == {} and len(ix) == 0 and ix.blocks_of("a") == 0
    assert ix.counters.size_mismatch == 0


@settings(max_examples=150, deadline=None)
@given(
    ratio=st.sampled_from([(4, 4), (4, 8), (4, 16), (8, 4), (16, 4), (8, 8)]),
    n_engine_blocks=st.integers(1, 12),
    cuts=st.sets(st.integers(1, 11), max_size=5),
    remove_at=st.integers(0, 11),
    salt=st.sampled_from(["", "s"]),
)
def test_any_ratio_and_any_event_split_index_what_a_request_would_look_up(
    ratio, n_engine_blocks, cuts, remove_at, salt
):
    engine_bs, ours = ratio
    ix = KVBlockIndex(block_size=ours)
    ix.add_endpoint("a", MODEL)
    tokens = [1000 + i for i in range(engine_bs * n_engine_blocks)]
    bounds = [0, *sorted(c for c in cuts if c < n_engine_blocks), n_engine_blocks]
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        extra = [(salt,) if salt and i == 0 else () for i in range(lo, hi)]
        ix.apply(
            "a",
            [
                Stored(
                    tuple(range(lo + 1, hi + 1)),
                    lo if lo else None,
                    tokens[lo * engine_bs : hi * engine_bs],
                    engine_bs,
                    extra_keys=tuple(extra) if salt else None,
                )
            ],
        )
    keys = request_keys(MODEL, tokens, ours, cache_salt=salt)
    full = len(tokens) // ours
    assert ix.match(keys) == ({"a": float(full)} if full else {})
    # The engine evicts one block: we keep exactly our blocks wholly before it.
    if remove_at < n_engine_blocks:
        ix.apply("a", [Removed((remove_at + 1,))])
        kept = (remove_at * engine_bs) // ours
        assert ix.match(keys) == ({"a": float(kept)} if kept else {})


def test_memory_bound_keeps_the_newest_blocks():
    ix = index(max_blocks=10)
    tokens = list(range(4 * 30))
    ix.apply("a", [Stored(tuple(range(1, 31)), None, tokens, BS)])
    assert len(ix) == 10 and ix.counters.evicted == 20
    assert ix.blocks_of("a") == 10
    keys = chain_keys(root_key(MODEL), tokens, BS)
    assert ix.match(keys) == {}  # the oldest (the prefix) went first
    assert ix.match(keys[20:]) == {"a": 10.0}
    # a remove of an evicted block is harmless, and its bridge entry goes
    ix.apply("a", [Removed((1, 30))])
    assert ix.blocks_of("a") == 9


@pytest.mark.parametrize(("holders", "engine_bs"), [(1, 16), (3, 16), (1, 4), (2, 8), (1, 32), (1, 64)])
def test_memory_estimate_matches_what_is_allocated(holders, engine_bs):
    ix = KVBlockIndex(block_size=16, max_blocks=10**7)
    for h in range(holders):
        ix.add_endpoint(f"p{h}", MODEL)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    n = 20_000
    per = 1600 // engine_bs  # engine blocks per 1,600-token prompt (100 of ours)
    for run in range(n // 100):
        toks = [100_000 + t for t in range(run * 1600, run * 1600 + 1600)]  # real ids are large
        for h in range(holders):  # real engines publish 64-bit hashes
            hashes = tuple(2**63 + h * 10**9 + run * 1000 + i for i in range(per))
            ix.apply(f"p{h}", [Stored(hashes, None, toks, engine_bs)])
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(ix) == n
    # epp_kv_index_memory_bytes is within 20 % of what the index allocated
    assert 0.8 * used <= ix.memory_bytes <= 1.2 * used, (used / n, ix.memory_bytes / n)


def test_two_endpoints_share_blocks_and_drop_out_where_they_diverge():
    ix = index()
    ix.apply("a", [stored([1, 2, 3], None, PROMPT[:12])])
    other = [*PROMPT[:8], 7, 7, 7, 7]
    ix.apply("b", [stored([1, 2, 9], None, other)])
    assert ix.match(request_keys(MODEL, PROMPT, BS)) == {"a": 3.0, "b": 2.0}
    assert ix.match(request_keys(MODEL, other, BS)) == {"a": 2.0, "b": 3.0}


def test_producer_skips_the_approximate_index_when_every_endpoint_publishes():
    from epp.datalayer.endpoint import Endpoint
    from epp.scheduling.plugin import build_plugin
    from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY
    from epp.scheduling.plugins.prefix_index import block_hashes
    from epp.scheduling.types import CycleState, ProfileResult, SchedulingRequest, SchedulingResult

    p = build_plugin("precise-prefix-cache-producer", "p", {"tokenProcessorConfig": {"blockSizeTokens": BS}})
    eps = [Endpoint(name=n, address="127.0.0.1", port=i + 1) for i, n in enumerate("ab")]
    for e in eps:
        p.index.add_endpoint(e.name, MODEL)
    p.index.apply("a", [stored([1, 2, 3], None, PROMPT[:12])])
    text = b"x" * 500
    req = SchedulingRequest("r", MODEL, prefix_input=text, token_ids=PROMPT)
    p.ingester._publishing.update({"a", "b"})  # both have published events
    cycle = CycleState()
    p.produce(cycle, req, eps)
    assert cycle[PREFIX_MATCH_KEY].matches == {"a": 3.0}
    assert req.prefix_key == block_hashes(MODEL, "", text, 64, 256)[0]  # the same popularity key
    p.pre_request(cycle, req, SchedulingResult({"default": ProfileResult([eps[0]])}, "default"))
    assert p.approx.popularity.inflight == {req.prefix_key: 1} and len(p.approx.index) == 0
    # one endpoint without events: the approximate index is used, and fed, again
    p.ingester._publishing.discard("b")
    cycle = CycleState()
    p.produce(cycle, req, eps)
    p.pre_request(cycle, req, SchedulingResult({"default": ProfileResult([eps[1]])}, "default"))
    assert len(p.approx.index) > 0

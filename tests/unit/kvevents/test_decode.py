"""Every event shape and hash form of kvevents.md §1 decodes to the same typed events."""

import msgpack
import pytest

from epp.datalayer.kvevents.decode import Cleared, DecodeError, Removed, Stored, decode_batch, decode_event, fold_hash

TOKENS = list(range(32))


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_positional_vllm_0_8_minimal_fields():
    # The first shape (#16750): hashes, parent, tokens, block_size, lora_id; no medium.
    evs = decode_batch(pack([1.5, [["BlockStored", [11, 12], None, TOKENS, 16, None]]]))
    assert evs == [Stored((11, 12), None, TOKENS, 16, None, "gpu", None)]


def test_positional_with_medium_lora_name_extra_keys_and_group():
    ev = ["BlockStored", [11], 7, TOKENS[:16], 16, 3, "CPU", "sql-lora", [["sql-lora", "salt"]], 0]
    (s,) = decode_batch(pack([0.0, [ev], 0]))
    assert s.parent == 7 and s.tier == "cpu" and s.lora_name == "sql-lora" and s.extra_keys == (["sql-lora", "salt"],)


def test_map_events_in_map_batch_and_in_array_batch():
    ev = {
        "type": "BlockStored",
        "block_hashes": [5],
        "parent_block_hash": None,
        "token_ids": TOKENS[:16],
        "block_size": 16,
        "medium": "GPU",
        "lora_name": None,
        "unknown_future_field": 1,
    }
    for batch in ({"ts": 0.0, "events": [ev], "data_parallel_rank": 0}, [0.0, [ev], None]):
        assert decode_batch(pack(batch)) == [Stored((5,), None, TOKENS[:16], 16)]


def test_removed_and_cleared_both_encodings():
    assert decode_batch(pack([0, [["BlockRemoved", [1, 2], "GPU"], ["AllBlocksCleared"]]])) == [
        Removed((1, 2), "gpu"),
        Cleared(),
    ]
    assert decode_batch(
        pack(
            {
                "ts": 0,
                "events": [
                    {"type": "BlockRemoved", "block_hashes": [1], "medium": "cpu"},
                    {"type": "AllBlocksCleared"},
                ],
            }
        )
    ) == [Removed((1,), "cpu"), Cleared()]
    # BlockRemoved before medium existed
    assert decode_batch(pack([0, [["BlockRemoved", [9]]]])) == [Removed((9,), "gpu")]


def test_hash_forms_fold_to_the_same_u64():
    digest = bytes(range(32))  # a raw sha256 digest (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0)
    as_int = int.from_bytes(digest[-8:], "big")  # what int mode publishes
    assert fold_hash(digest) == fold_hash(as_int) == as_int
    assert fold_hash(-1) == (1 << 64) - 1  # SGLang's signed int64
    assert fold_hash(bytes(16)[:-1] + b"\x05") == 5  # xxhash's 16-byte digests
    ev = decode_event(["BlockStored", [digest], digest, TOKENS[:16], 16])
    assert ev.hashes == (as_int,) and ev.parent == as_int


def test_unknown_tags_are_skipped_and_malformed_events_raise():
    assert decode_batch(pack([0, [["FutureEvent", 1], ["AllBlocksCleared"]]])) == [Cleared()]
    for bad in (
        b"\xc1",
        pack("x"),
        pack([0, "events"]),
        pack([0, [["BlockStored", "nope", None, [], 16]]]),
        pack([0, [["BlockStored", [1], None, [1, 2, 3], 16]]]),  # tokens not n x block_size
        pack([0, [["BlockStored", [True], None, [], 16]]]),
        pack([0, [42]]),
    ):
        with pytest.raises(DecodeError):
            decode_batch(bad)


def test_sim_publisher_output_decodes_both_formats():
    from epp.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
    from epp.sim.kvevents import encode_batch

    events = [BlockStored([1, 2], None, TOKENS, 16, 1, "lora-a"), BlockRemoved([1]), AllBlocksCleared()]
    for fmt in ("array", "map"):
        out = decode_batch(encode_batch(events, 0.0, fmt))
        assert out == [Stored((1, 2), None, TOKENS, 16, "lora-a"), Removed((1,)), Cleared()]

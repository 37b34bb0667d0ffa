"""Exact-engine-hash mode: vLLM's own block hashes, checked against published vectors, and the
index and producer keyed by them."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.kvevents.decode import Removed, Stored
from epp.datalayer.kvevents.enginehash import engine_block_hashes, hash_function, none_hash
from epp.datalayer.kvevents.index import KVBlockIndex
from epp.scheduling.config import ConfigError, load_config
from epp.scheduling.plugin import build_plugin
from epp.scheduling.plugins.prefix import PREFIX_MATCH_KEY
from epp.scheduling.types import CycleState, SchedulingRequest

# Known vectors computed with vLLM v0.17.0's kv_cache_utils (hash_block_tokens,
# maybe_convert_block_hash) under PYTHONHASHSEED=0, as published in the fixtures of
# loxilb-io/loxilb-inference-gateway (cicd/common/kv_hash/fixtures/kv_hash_vectors.json).
BLOCK0 = [101 * (i + 1) for i in range(16)]
BLOCK1 = [1717 + 101 * i for i in range(16)]
VECTORS = {
    "sha256_cbor": (
        "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e",
        [7876691182959014722, 8769878286166771163],
    ),
    "xxhash_cbor": ("1ebe36576dcb573f26b99533a20aaeca", [11066090714971094433, 8162514883595054550]),
}
MODEL = "m"


@pytest.mark.parametrize("algorithm", sorted(VECTORS))
def test_block_hashes_are_vllms(algorithm):
    root, expected = VECTORS[algorithm]
    assert none_hash(algorithm, "0").hex() == root
    assert engine_block_hashes(BLOCK0 + BLOCK1, 16, algorithm, "0") == expected
    # A partial last block is not hashed (vLLM caches full blocks only).
    assert engine_block_hashes([*BLOCK0, *BLOCK1, 5, 6], 16, algorithm, "0") == expected
    assert engine_block_hashes(BLOCK0 + BLOCK1, 16, algorithm, "0", max_blocks=1) == expected[:1]


def test_lora_name_and_cache_salt_are_the_extra_keys_vllm_hashes():
    fn = hash_function("sha256_cbor")
    root = none_hash("sha256_cbor", "0")
    b0 = fn((root, tuple(BLOCK0), ("adapter", "salt")))  # block 0: LoRA name, then cache_salt
    b1 = fn((b0, tuple(BLOCK1), ("adapter",)))  # later blocks: the LoRA name only
    got = engine_block_hashes(BLOCK0 + BLOCK1, 16, "sha256_cbor", "0", "adapter", "salt")
    assert got == [int.from_bytes(b0[-8:], "big"), int.from_bytes(b1[-8:], "big")]
    plain = engine_block_hashes(BLOCK0 + BLOCK1, 16, "sha256_cbor", "0")
    assert got[0] != plain[0] and engine_block_hashes(BLOCK0, 16, "sha256_cbor", "1") != plain[:1]
    with pytest.raises(ValueError, match="sha256_cbor, xxhash_cbor"):
        engine_block_hashes(BLOCK0, 16, "sha256", "0")


def test_exact_index_keys_events_by_their_hashes_and_needs_no_parent():
    ix = KVBlockIndex(block_size=16, exact=True)
    ix.add_endpoint("a", MODEL)
    keys = engine_block_hashes(BLOCK0 + BLOCK1 + BLOCK0, 16, "sha256_cbor", "0")
    # The EPP joined late: block 1's parent was stored before it listened. Still indexed.
    ix.apply("a", [Stored(tuple(keys[1:]), keys[0], BLOCK1 + BLOCK0, 16)])
    assert ix.match(keys) == {} and ix.match(keys[1:]) == {"a": 2.0}
    assert ix.counters.orphans == 0
    ix.apply("a", [Stored((keys[0],), None, BLOCK0, 16)])
    assert ix.match(keys) == {"a": 3.0}
    ix.apply("a", [Removed((keys[1],))])
    assert ix.match(keys) == {"a": 1.0}
    ix.apply("a", [Stored((99,), None, list(range(8)), 8)])  # vLLM hashes its own block size
    assert ix.counters.size_mismatch == 1


def _producer(params: dict):
    return build_plugin(
        "precise-prefix-cache-producer",
        "p",
        {"tokenProcessorConfig": {"blockSizeTokens": 16, **params}, "kvEventsConfig": {"modelName": MODEL}},
    )


def test_the_producer_matches_requests_to_what_vllm_published_in_exact_mode():
    p = _producer({"engineHashAlgorithm": "xxhash_cbor", "hashSeed": "0"})
    eps = [Endpoint(name=n, address="127.0.0.1", port=i + 1) for i, n in enumerate("ab")]
    for e in eps:
        p.index.add_endpoint(e.name, MODEL)
    p.ingester._publishing.update({"a", "b"})
    # What vLLM publishes for a base-model request and for one to adapter "ad" on b.
    published = engine_block_hashes(BLOCK0 + BLOCK1, 16, "xxhash_cbor", "0")
    assert published == VECTORS["xxhash_cbor"][1]
    p.index.apply("a", [Stored(tuple(published), None, BLOCK0 + BLOCK1, 16)])
    lora = engine_block_hashes(BLOCK0 + BLOCK1, 16, "xxhash_cbor", "0", "ad")
    p.index.apply("b", [Stored(tuple(lora), None, BLOCK0 + BLOCK1, 16, lora_name="ad")])
    for target, want in ((MODEL, {"a": 2.0}), ("ad", {"b": 2.0})):
        cycle = CycleState()
        p.produce(cycle, SchedulingRequest("r", target, prefix_input=b"x" * 500, token_ids=BLOCK0 + BLOCK1), eps)
        assert cycle[PREFIX_MATCH_KEY].matches == want, target


def test_exact_mode_config_is_checked():
    with pytest.raises(ValueError, match="needs hashSeed"):
        _producer({"engineHashAlgorithm": "sha256_cbor"})
    text = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-producer
  parameters: {tokenProcessorConfig: {engineHashAlgorithm: sha256, hashSeed: "0"}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins: [{pluginRef: max-score-picker}]
"""
    with pytest.raises(ConfigError, match="engineHashAlgorithm"):
        load_config(text, "test")

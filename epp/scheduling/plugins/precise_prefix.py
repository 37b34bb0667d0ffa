"""Precise prefix-cache affinity from the model servers' KV events (llm-d's plugin names).

* `token-producer`: how a request's prompt becomes the tokens the server will prefill — the
  server's own /tokenize or render endpoints (`vllm`) or a local tokenizer directory
  (`local`). The director asks it before scheduling (requestcontrol/director.py) and waits for
  a remote answer like for a parsed body; the tokens ride on SchedulingRequest.token_ids.
* `precise-prefix-cache-producer`: owns the KV-event ingester (datalayer/kvevents, cold path)
  and the index it fills, and writes the same PrefixMatchInfo the approximate producer does,
  so `prefix-cache-scorer` and `estimated-ttft-scorer` read it unchanged. An endpoint that has
  published no events (or a request whose tokens are unknown) is matched by the approximate
  index this producer also keeps, in the same block units.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.kvevents.enginehash import engine_block_hashes
from epp.datalayer.kvevents.index import KVBlockIndex
from epp.datalayer.kvevents.ingester import IngestConfig, KVEventIngester
from epp.datalayer.kvevents.keys import request_keys
from epp.scheduling.plugin import DataProducer, Params, Plugin, PreRequest, ResponseComplete, register
from epp.scheduling.plugins.prefix import (
    CHARS_PER_TOKEN,
    PREFIX_MATCH_KEY,
    ApproxPrefixCacheProducer,
    PrefixMatchInfo,
    PrefixProducerParams,
)
from epp.scheduling.plugins.prefix_index import block_hashes
from epp.scheduling.types import CycleState, SchedulingRequest, SchedulingResult
from epp.tokenization.cache import TokenCache
from epp.tokenization.local import LocalTokenizer, TokenizerLoadError
from epp.tokenization.prompt import Prompt
from epp.tokenization.remote import RemoteTokenizeError, RemoteTokenizer

log = logging.getLogger(__name__)

# Prompts up to this many characters are tokenized locally inline (well under a millisecond);
# longer ones on the tokenizer thread, so the event loop never stalls on a long prompt.
INLINE_CHARS = 2000


class _Sub(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ---- token-producer ----------------------------------------------------------------------------


class VllmTokenizerParams(_Sub):
    url: str = ""  # a render sidecar or one server; empty: the pool's own endpoints
    endpoint: str = Field("tokenize", pattern="^(tokenize|render)$")
    timeout_s: float = Field(2.0, alias="timeoutSeconds", gt=0, le=30)


class LocalTokenizerParams(_Sub):
    path: str  # a directory with tokenizer.json (+ tokenizer_config.json for chat), or the file
    chat_template: str | None = Field(None, alias="chatTemplate")  # a Jinja file overriding the config's


class TokenProducerParams(Params):
    model_name: str = Field("", alias="modelName")
    vllm: VllmTokenizerParams | None = None
    local: LocalTokenizerParams | None = None
    cache_tokens: int = Field(4_000_000, alias="cacheTokens", ge=0)


@register
class TokenProducer(Plugin):
    type_name = "token-producer"
    Params = TokenProducerParams

    def __init__(self, name: str, params: TokenProducerParams) -> None:
        super().__init__(name, params)
        if params.local is not None and params.vllm is not None:
            raise ValueError("set one of local and vllm, not both")
        self.local: LocalTokenizer | None = None
        self.remote: RemoteTokenizer | None = None
        if params.local is not None:
            template = None
            if params.local.chat_template:
                try:
                    with open(params.local.chat_template, encoding="utf-8") as f:
                        template = f.read()
                except OSError as exc:
                    raise ValueError(f"local.chatTemplate: {exc}") from None
            try:
                self.local = LocalTokenizer(params.local.path, template)
            except TokenizerLoadError as exc:
                raise ValueError(f"local.path: {exc}") from None
        else:
            v = params.vllm or VllmTokenizerParams()
            self.remote = RemoteTokenizer(v.endpoint, v.timeout_s)
        self.cache = TokenCache(params.cache_tokens)
        self.counts = {"given": 0, "cache": 0, "local": 0, "remote": 0, "failed": 0}
        self.duration: Any = None  # Histogram by source, once attached to a registry
        self._executor: ThreadPoolExecutor | None = None
        self._rng = random.Random()

    def attach(self, datastore: Any, registry: Any = None) -> None:
        if registry is not None:
            from epp.observability.kvmetrics import register_tokenizer_metrics

            self.duration = register_tokenizer_metrics(registry, self)

    @property
    def failures(self) -> int:
        return self.counts["failed"]

    def prompt(self, api: str, data: dict[str, Any] | None, target_model: str) -> Prompt | None:
        from epp.tokenization.prompt import prompt_of

        return prompt_of(api, data, self.params.model_name or target_model)

    def tokenize_now(self, prompt: Prompt) -> Sequence[int] | None:
        """Tokens without waiting: a given token-id prompt, a cache hit, or the local tokenizer.
        None when only the server can answer (then await `tokenize`)."""
        c = self.counts
        if prompt.token_ids is not None:
            c["given"] += 1
            return prompt.token_ids
        key = prompt.cache_key()
        ids = self.cache.get(key)
        if ids is not None:
            c["cache"] += 1
            return ids
        if (
            self.local is None
            or len(prompt.text or "") + sum(len(str(m.get("content", ""))) for m in prompt.messages or ())
            > INLINE_CHARS
        ):
            return None  # a long prompt is tokenized on a thread, not on the event loop
        return self._local(prompt, key)

    def _local(self, prompt: Prompt, key: int) -> Sequence[int]:
        assert self.local is not None
        c = self.counts
        t0 = time.perf_counter()
        try:
            ids = self.local.tokenize(prompt)
        except Exception as exc:  # a template that fails on these messages: schedule without tokens
            c["failed"] += 1
            log.debug("local tokenizer: %s", exc)
            return []
        c["local"] += 1
        if self.duration is not None:
            self.duration.labels("local").observe(time.perf_counter() - t0)
        return self.cache.put(key, ids)

    async def tokenize(self, prompt: Prompt, endpoints: list[Endpoint]) -> Sequence[int]:
        """The server's tokens ([] when it cannot say in time: the approximate index decides), or
        the local tokenizer's, computed on its own thread."""
        if self.local is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool(), self._local, prompt, prompt.cache_key())
        assert self.remote is not None
        url = self.params.vllm.url if self.params.vllm is not None and self.params.vllm.url else ""
        if not url:
            if not endpoints:
                return []
            ep = endpoints[self._rng.randrange(len(endpoints))]
            url = f"http://{ep.hostport}"
        t0 = time.perf_counter()
        try:
            ids = await self.remote.tokenize(url, prompt)
        except RemoteTokenizeError as exc:
            self.counts["failed"] += 1
            log.debug("remote tokenizer: %s", exc)
            return []
        self.counts["remote"] += 1
        if self.duration is not None:
            self.duration.labels("remote").observe(time.perf_counter() - t0)
        return self.cache.put(prompt.cache_key(), ids)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        return self._executor

    async def close(self) -> None:
        if self.remote is not None:
            await self.remote.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


# ---- precise-prefix-cache-producer ------------------------------------------------------------


class TokenProcessorParams(_Sub):
    block_size_tokens: int = Field(16, alias="blockSizeTokens", gt=0)
    block_size: int | None = Field(None, alias="blockSize", gt=0)  # the old name
    hash_seed: str = Field("", alias="hashSeed")
    # Ours: key blocks by vLLM's own hashes (sha256_cbor / xxhash_cbor), for operators who pin
    # vLLM's --prefix-caching-hash-algo and PYTHONHASHSEED (= hashSeed). Empty: our own keys.
    engine_hash_algorithm: str = Field("", alias="engineHashAlgorithm", pattern="^(|sha256_cbor|xxhash_cbor)$")


class IndexerParams(_Sub):
    max_blocks: int = Field(2_000_000, alias="maxBlocks", gt=0)
    cpu_weight: float = Field(0.8, alias="cpuWeight", ge=0, le=1)


class PodDiscoveryParams(_Sub):
    socket_port: int = Field(5557, alias="socketPort", gt=0, lt=65536)
    replay_socket_port: int | None = Field(None, alias="replaySocketPort", gt=0, lt=65536)
    # Ours: ports relative to each endpoint's own port, for servers that share an address.
    socket_port_offset: int | None = Field(None, alias="socketPortOffset")
    replay_socket_port_offset: int | None = Field(None, alias="replaySocketPortOffset")
    pod_label_selector: str = Field("", alias="podLabelSelector")  # accepted; endpoints come from the pool
    pod_namespace: str = Field("", alias="podNamespace")


class KvEventsParams(_Sub):
    # One SUB socket the EPP binds (e.g. tcp://*:5557) that every model server's publisher
    # connects to; endpoints are told apart by their topics' `<ip>:<port>`.
    zmq_endpoint: str = Field("", alias="zmqEndpoint", pattern=r"^(|(tcp|ipc)://.+)$")
    topic_filter: str = Field("kv@", alias="topicFilter")
    engine_type: str = Field("vllm", alias="engineType", pattern="^(vllm|sglang)$")
    discover_pods: bool = Field(True, alias="discoverPods")
    concurrency: int = Field(4, ge=1)  # accepted for llm-d configs; one thread keeps per-pod order here
    model_name: str = Field("", alias="modelName")
    pod_discovery_config: PodDiscoveryParams = Field(default_factory=PodDiscoveryParams, alias="podDiscoveryConfig")


class PreciseProducerParams(Params):
    token_processor_config: TokenProcessorParams = Field(
        default_factory=TokenProcessorParams, alias="tokenProcessorConfig"
    )
    indexer_config: IndexerParams = Field(default_factory=IndexerParams, alias="indexerConfig")
    kv_events_config: KvEventsParams = Field(default_factory=KvEventsParams, alias="kvEventsConfig")
    max_prefix_blocks_to_match: int = Field(0, alias="maxPrefixBlocksToMatch", ge=0)  # 0 = the whole prompt
    speculative_indexing: bool = Field(False, alias="speculativeIndexing")
    speculative_ttl: str = Field("2s", alias="speculativeTTL")


@register
class PrecisePrefixCacheProducer(DataProducer, PreRequest, ResponseComplete):
    type_name = "precise-prefix-cache-producer"
    Params = PreciseProducerParams

    def __init__(self, name: str, params: PreciseProducerParams) -> None:
        super().__init__(name, params)
        if params.speculative_indexing:
            raise ValueError(
                "speculativeIndexing is not supported: the approximate index covers endpoints "
                "without events (docs/routing.md)"
            )
        if params.kv_events_config.engine_type == "sglang":
            log.info("%s: SGLang events publish no extra_keys; salted requests never match there", name)
        tp = params.token_processor_config
        self.block_size = tp.block_size or tp.block_size_tokens
        ix = params.indexer_config
        self.engine_hash = tp.engine_hash_algorithm
        if self.engine_hash and not tp.hash_seed:
            raise ValueError(
                "tokenProcessorConfig.engineHashAlgorithm needs hashSeed: vLLM's PYTHONHASHSEED (without "
                "one vLLM roots its block hashes in random bytes per process)"
            )
        self.index = KVBlockIndex(
            self.block_size, ix.max_blocks, tp.hash_seed, ix.cpu_weight, exact=bool(self.engine_hash)
        )
        kv = params.kv_events_config
        if not kv.discover_pods and not kv.zmq_endpoint:
            raise ValueError(
                "kvEventsConfig: discoverPods is false and no zmqEndpoint is set, so no KV events "
                "would ever arrive (set zmqEndpoint, or leave discoverPods true)"
            )
        pd = kv.pod_discovery_config
        self.ingest_config = IngestConfig(
            socket_port=pd.socket_port,
            socket_port_offset=pd.socket_port_offset,
            replay_socket_port=pd.replay_socket_port,
            replay_socket_port_offset=pd.replay_socket_port_offset,
            topic_filter=kv.topic_filter,
            model_name=kv.model_name,
            zmq_endpoint=kv.zmq_endpoint or None,
            discover_pods=kv.discover_pods,
        )
        self.ingester = KVEventIngester(self.index, self.ingest_config)
        self.approx = ApproxPrefixCacheProducer(name + "/approximate", PrefixProducerParams())
        self._unsubscribe = None

    # lifecycle: the runner attaches the datastore (cold path), then closes on shutdown
    def attach(self, datastore: Any, registry: Any = None) -> None:
        self.ingester.start()
        for ep in datastore.endpoints():
            self.ingester.add(ep.name, ep.address, ep.port)
        self._unsubscribe = datastore.subscribe(
            on_add=lambda ep: self.ingester.add(ep.name, ep.address, ep.port),
            on_remove=lambda ep: self.ingester.remove(ep.name),
        )
        if registry is not None:
            from epp.observability.kvmetrics import register_kv_metrics

            register_kv_metrics(registry, self)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.ingester.stop()

    def remove_endpoint(self, name: str) -> None:
        self.approx.remove_endpoint(name)

    # hot path
    def produce(self, cycle: CycleState, req: SchedulingRequest, endpoints: list[Endpoint]) -> None:
        tokens = req.token_ids
        publishing = self.ingester.publishing
        approx_cycle = CycleState()
        if tokens and all(publishing(e.name) for e in endpoints):
            # Nothing falls back: the approximate index would be neither read nor needed later
            # (an endpoint that published once is matched precisely until it is removed); only
            # the first block's hash is kept, as the key of the prefix's popularity.
            bs_approx = self.approx._block_size(endpoints)
            first = block_hashes(req.target_model, req.cache_salt, req.prefix_input, bs_approx * CHARS_PER_TOKEN, 1)
            req.prefix_key = first[0] if first else 0
            approx = PrefixMatchInfo([], {}, bs_approx, self.approx.popularity.share(req.prefix_key, len(endpoints)))
        else:
            self.approx.produce(approx_cycle, req, endpoints)
            approx = approx_cycle[PREFIX_MATCH_KEY]
        cycle[_APPROX_KEY] = approx
        if not tokens:
            cycle[PREFIX_MATCH_KEY] = approx
            return
        bs = self.block_size
        if self.engine_hash:
            # vLLM adds the adapter's name to every block of a LoRA request; the base model's
            # name is in no hash (the topic or modelName says which names are base models).
            base = self.index.models()
            lora = req.target_model if base and req.target_model not in base else ""
            keys = engine_block_hashes(
                tokens,
                bs,
                self.engine_hash,
                self.index.hash_seed,
                lora,
                req.cache_salt,
                self.params.max_prefix_blocks_to_match,
            )
        else:
            keys = request_keys(
                req.target_model,
                tokens,
                bs,
                req.cache_salt,
                self.index.hash_seed,
                self.params.max_prefix_blocks_to_match,
            )
        precise = self.index.match(keys) if keys else {}
        matches: dict[str, float] = {}
        abs_ = approx.block_size_tokens
        # The approximate blocks hash characters (CHARS_PER_TOKEN per token); in tokens each is
        # about abs_ long, so a run of n of them is about n * abs_ / bs precise blocks.
        for e in endpoints:
            if publishing(e.name):
                m = precise.get(e.name, 0.0)
            else:
                m = float(min(len(keys), approx.matches.get(e.name, 0) * abs_ // bs))
            if m:
                matches[e.name] = m
        cycle[PREFIX_MATCH_KEY] = PrefixMatchInfo(keys, matches, bs, approx.popularity)  # type: ignore[arg-type]

    def pre_request(self, cycle: CycleState, req: SchedulingRequest, result: SchedulingResult) -> None:
        approx = cycle.get(_APPROX_KEY)
        if approx is None:
            return
        sub = CycleState()
        sub[PREFIX_MATCH_KEY] = approx
        self.approx.pre_request(sub, req, result)

    def response_complete(self, req: SchedulingRequest, result: SchedulingResult, usage: object) -> None:
        self.approx.response_complete(req, result, usage)


_APPROX_KEY = "approx-prefix-cache-match-info"

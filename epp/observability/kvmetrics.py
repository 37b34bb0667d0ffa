"""Metrics of the KV-event ingester and the precise index, read at scrape time (no hot-path cost)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry


class KVEventsCollector(Collector):
    def __init__(self, producer: Any) -> None:
        self.p = producer

    def collect(self) -> Iterator[Any]:
        ing = self.p.ingester
        ix = self.p.index
        c = ing.counters
        b = CounterMetricFamily(
            "epp_kv_events_batches", "KV-event batches received, by what their sequence number said", labels=["kind"]
        )
        for kind, n in list(c.batches.items()):
            b.add_metric([kind], n)
        yield b
        yield CounterMetricFamily(
            "epp_kv_events_decode_errors", "KV-event batches that failed to decode", value=c.decode_errors
        )
        yield CounterMetricFamily(
            "epp_kv_events_bad_frames", "KV-event messages without [topic, seq, payload]", value=c.bad_frames
        )
        yield CounterMetricFamily(
            "epp_kv_events_unknown_topics",
            "KV-event batches on the central zmqEndpoint whose topic names no known endpoint",
            value=c.unknown_topics,
        )
        r = CounterMetricFamily(
            "epp_kv_events_replays", "Replay requests to model servers, by outcome", labels=["outcome"]
        )
        for outcome, n in list(c.replays.items()):
            r.add_metric([outcome], n)
        yield r
        yield GaugeMetricFamily(
            "epp_kv_events_subscribers", "Endpoints with a KV-event subscription", value=ing.subscribers
        )
        yield GaugeMetricFamily("epp_kv_index_blocks", "Distinct blocks in the precise prefix index", value=len(ix))
        yield GaugeMetricFamily(
            "epp_kv_index_memory_bytes", "Estimated memory of the precise prefix index", value=ix.memory_bytes
        )
        yield GaugeMetricFamily(
            "epp_kv_index_max_blocks", "Bound on distinct blocks in the precise prefix index", value=ix.max_blocks
        )
        ic = ix.counters
        e = CounterMetricFamily(
            "epp_kv_index_events", "Events applied to the precise index, by outcome", labels=["outcome"]
        )
        for outcome in ("stored", "removed", "cleared", "orphans", "size_mismatch", "evicted"):
            e.add_metric([outcome], getattr(ic, outcome))
        yield e


class TokenizerCollector(Collector):
    def __init__(self, producer: Any) -> None:
        self.p = producer

    def collect(self) -> Iterator[Any]:
        p = self.p
        t = CounterMetricFamily(
            "epp_tokenizer_requests", "Prompts tokenized for the precise prefix index, by how", labels=["source"]
        )
        for source, n in list(p.counts.items()):
            t.add_metric([source], n)
        yield t
        yield GaugeMetricFamily(
            "epp_tokenizer_cache_tokens", "Token ids held by the tokenization cache", value=p.cache.tokens
        )


def register_kv_metrics(registry: CollectorRegistry, producer: Any) -> None:
    registry.register(KVEventsCollector(producer))


def register_tokenizer_metrics(registry: CollectorRegistry, producer: Any) -> Histogram:
    """Registers the counters; returns the latency histogram the producer observes into."""
    registry.register(TokenizerCollector(producer))
    return Histogram(
        "epp_tokenizer_duration_seconds",
        "Time to tokenize a prompt that was not cached, by source",
        ["source"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
    )

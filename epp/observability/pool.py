"""Pool-level gauges (`inference_pool_*`) and in-flight counts, refreshed off the request path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from epp.datalayer.datastore import Datastore
from epp.datalayer.poolstats import pool_stats
from epp.datalayer.reachability import ReachabilityPolicy
from epp.observability.metrics import EppMetrics

log = logging.getLogger("epp.pool")


class InflightCollector(Collector):
    """Reads in-flight load at scrape time: exact, and costs nothing per request."""

    def __init__(self, datastore: Datastore, extra_sources=(), reachability: ReachabilityPolicy | None = None) -> None:
        self.datastore = datastore
        self.extra_sources = list(extra_sources)
        self.reachability = reachability

    def collect(self):
        reqs = GaugeMetricFamily(
            "epp_endpoint_inflight_requests",
            "Requests the EPP sent to an endpoint that have not finished.",
            labels=["endpoint"],
        )
        toks = GaugeMetricFamily(
            "epp_endpoint_inflight_prompt_tokens",
            "Estimated prompt tokens in flight to an endpoint.",
            labels=["endpoint"],
        )
        reach = GaugeMetricFamily(
            "epp_endpoint_reachable",
            "1 while the endpoint may receive picks, 0 while its server looks dead (docs/reliability.md).",
            labels=["endpoint"],
        )
        policy = self.reachability
        now = time.monotonic()
        stale = policy.current_stale_after() if policy is not None else 0.0
        for ep in self.datastore.endpoints():
            reqs.add_metric([ep.name], ep.inflight.requests)
            toks.add_metric([ep.name], ep.inflight.prompt_tokens)
            if policy is not None:
                reach.add_metric([ep.name], 1.0 if policy.reachable(ep, now, stale) else 0.0)
        yield reqs
        yield toks
        if policy is not None:
            yield reach
        for source in self.extra_sources:
            yield from source()


class PoolGaugeRefresher:
    def __init__(
        self,
        datastore: Datastore,
        metrics: EppMetrics,
        pool: str,
        interval: float,
        staleness: float,
        config=None,
        reachability: ReachabilityPolicy | None = None,
    ) -> None:
        self.datastore = datastore
        self.metrics = metrics
        self.pool = pool
        self.interval = max(0.1, interval)
        self.staleness = staleness
        self.config = config
        self._task: asyncio.Task | None = None
        self._known_pods: set[str] = set()
        metrics.registry.register(InflightCollector(datastore, [self._prefix_index_families], reachability))

    def _prefix_index_families(self):
        from epp.scheduling.plugins.prefix import ApproxPrefixCacheProducer

        if self.config is None:
            return
        producers = self.config.plugins_of(ApproxPrefixCacheProducer)
        size = sum(len(p.index) for p in producers)
        mem = sum(p.index.memory_bytes for p in producers)
        self.metrics.prefix_indexer_size.set(size)
        self.metrics.prefix_indexer_bytes.set(mem)
        return
        yield  # pragma: no cover - makes this a generator

    def refresh(self) -> None:
        s = pool_stats(self.datastore.endpoints(), self.staleness, time.monotonic())
        m, name = self.metrics, self.pool
        m.pool_ready_pods.labels(name).set(s.ready)
        m.pool_avg_kv.labels(name).set(s.avg_kv)
        m.pool_avg_queue.labels(name).set(s.avg_queue)
        m.pool_avg_running.labels(name).set(s.avg_running)
        current = set()
        for pod, q in s.per_pod_queue.items():
            m.pool_per_pod_queue.labels(name, pod).set(q)
            current.add(pod)
        for gone in self._known_pods - current:
            with contextlib.suppress(KeyError):
                m.pool_per_pod_queue.remove(name, gone)
        self._known_pods = current

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:
                log.exception("pool gauge refresh failed")
            await asyncio.sleep(self.interval)

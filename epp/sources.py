"""Which cold-path sources feed the datastore and policy stores, chosen from the options.

Static endpoints are loaded directly by the runner; Kubernetes mode (--pool-name or
--endpoint-selector) builds watchers here, plus leader election with --ha-enable-leader-election.
Nothing here touches the network: the sources connect in the background once started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from epp.datalayer.datastore import Datastore
from epp.observability.health import HealthState
from epp.observability.metrics import EppMetrics
from epp.options import Options
from epp.routing.objectives import ObjectiveStore
from epp.routing.rewrites import RewriteStore
from epp.scheduling.config import LoadedConfig


class SourceError(RuntimeError):
    """A source that cannot start (bad selector, no cluster access...); stops start-up with its message."""


class Source(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass
class SourceTargets:
    """What the sources write to: endpoints, objectives, rewrites; and what they report on."""

    config: LoadedConfig
    datastore: Datastore
    objectives: ObjectiveStore
    rewrites: RewriteStore
    metrics: EppMetrics
    health: HealthState


def _extractor_engine_settings(config: LoadedConfig | None) -> tuple[str, str]:
    """engineLabelKey/defaultEngine of the configured core-metrics-extractor (reference defaults otherwise)."""
    from epp.datalayer.engines import DEFAULT_ENGINE
    from epp.datalayer.kube.pods import ENGINE_LABEL
    from epp.scheduling.plugins.passive import CoreMetricsExtractor

    plugins = config.plugins_of(CoreMetricsExtractor) if config is not None else []
    if not plugins:
        return ENGINE_LABEL, DEFAULT_ENGINE
    p = plugins[0].params
    return p.engine_label_key or ENGINE_LABEL, p.default_engine or DEFAULT_ENGINE


def build_sources(opts: Options, t: SourceTargets) -> list[Source]:
    if not (opts.pool_name or opts.endpoint_selector):
        return []
    from epp.datalayer.kube.client import KubeConfigError, api_client
    from epp.datalayer.kube.pool import PoolError, standalone_name, standalone_pool
    from epp.datalayer.kube.source import KubeSource, KubeTargets
    from epp.ha.lease import LeaderElection, lease_name

    try:
        api = api_client(opts)
    except KubeConfigError as exc:
        raise SourceError(str(exc)) from None
    label, engine = _extractor_engine_settings(t.config)
    targets = KubeTargets(t.datastore, t.objectives, t.rewrites, t.metrics, label, engine)
    if opts.pool_name:
        name = opts.pool_name
        source = KubeSource(api, targets, opts.pool_namespace, pool_name=name, pool_group=opts.pool_group)
    else:
        name = standalone_name(os.environ.get("POD_NAME", ""))
        try:
            pool = standalone_pool(opts.endpoint_selector, opts.endpoint_target_ports, opts.pool_namespace, name)
        except PoolError as exc:
            raise SourceError(str(exc)) from None
        source = KubeSource(api, targets, opts.pool_namespace, standalone_pool=pool)
    sources: list[Source] = [source]
    if opts.ha_enable_leader_election:
        sources.append(
            LeaderElection(api, opts.pool_namespace, lease_name(opts.pool_namespace, name), t.health, t.metrics)
        )
    return sources

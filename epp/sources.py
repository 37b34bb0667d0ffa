"""Which cold-path sources feed the datastore and policy stores, chosen from the options.

Static endpoints are loaded directly by the runner; Kubernetes mode (--pool-name or
--endpoint-selector) builds watchers here, plus leader election with --ha-enable-leader-election.
Nothing here touches the network: the sources connect in the background once started.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from epp.options import Options

if TYPE_CHECKING:
    from epp.runner import Epp


class SourceError(RuntimeError):
    """A source that cannot start (bad selector, no cluster access...); stops start-up with its message."""


class Source(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _extractor_engine_settings(epp: "Epp") -> tuple[str, str]:
    """engineLabelKey/defaultEngine of the configured core-metrics-extractor (reference defaults otherwise)."""
    from epp.datalayer.kube.pods import ENGINE_LABEL
    from epp.datalayer.engines import DEFAULT_ENGINE
    from epp.scheduling.plugins.passive import CoreMetricsExtractor

    plugins = epp.config.plugins_of(CoreMetricsExtractor) if getattr(epp, "config", None) else []
    if not plugins:
        return ENGINE_LABEL, DEFAULT_ENGINE
    p = plugins[0].params
    return p.engine_label_key or ENGINE_LABEL, p.default_engine or DEFAULT_ENGINE


def build_sources(opts: Options, epp: "Epp") -> list[Source]:
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
    label, engine = _extractor_engine_settings(epp)
    targets = KubeTargets(epp.datastore, epp.director.objectives, epp.director.rewrites, epp.metrics, label, engine)
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
        sources.append(LeaderElection(api, opts.pool_namespace, lease_name(opts.pool_namespace, name), epp.health,
                                      epp.metrics))
    return sources

"""Which cold-path sources feed the datastore and policy stores, chosen from the options.

Static endpoints are loaded directly by the runner; Kubernetes mode (--pool-name or
--endpoint-selector) builds watchers here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from epp.options import Options

if TYPE_CHECKING:
    from epp.runner import Epp


class SourceError(RuntimeError):
    """A source that cannot start (bad selector, no cluster access...); stops start-up with its message."""


class Source(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def build_sources(opts: Options, epp: "Epp") -> list[Source]:
    if opts.pool_name or opts.endpoint_selector:
        raise SourceError("Kubernetes endpoint sources are not available in this build; use --static-endpoints")
    return []

"""Built-in plugins. Importing this package registers them all by their reference type names."""

from epp.flowcontrol import fairness, ordering, prefill_gate, usagelimit  # noqa: F401  (flow-control plugins)
from epp.scheduling.plugins import (  # noqa: F401
    affinity,
    disagg,
    filters,
    load,
    lora,
    passive,
    pickers,
    precise_prefix,
    prefix,
    profiles,
    ttft,
)

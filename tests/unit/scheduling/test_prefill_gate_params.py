"""prefill-gate decisions and parameters (the waiting: tests/unit/flowcontrol/test_parking.py, and over gRPC
in tests/unit/extproc)."""

from __future__ import annotations

import pytest

from epp.datalayer.endpoint import Endpoint
from epp.flowcontrol.prefill_gate import PrefillGate
from epp.scheduling.config import load_config
from epp.scheduling.plugin import ConfigError, build_plugin


def gate(**params) -> PrefillGate:
    g = build_plugin("prefill-gate", "g", params)
    assert isinstance(g, PrefillGate)
    return g


def test_holds_only_long_uncached_prompts_beyond_the_per_endpoint_limit_until_max_wait():
    g = gate(minTokens=1000, maxPerEndpoint=2, maxWait="5s")
    e = Endpoint("a", "127.0.0.1", 8000)
    e.inflight.add(5000, long=True)
    assert not g.holds(e, 5000, waited=0.0, choices=8)  # one outstanding, two allowed
    e.inflight.add(5000, long=True)
    assert g.holds(e, 5000, waited=0.0, choices=8)
    assert g.holds(e, 1000, waited=4.9, choices=8)
    assert not g.holds(e, 999, waited=0.0, choices=8)  # short prompts always go
    assert not g.holds(e, 5000, waited=5.0, choices=8)  # waited long enough: sent anyway
    assert not g.holds(e, 5000, waited=0.0, choices=1)  # nowhere else to go: the server queues it
    e.inflight.prefill_done(5000, long=True)
    assert not g.holds(e, 5000, waited=0.0, choices=8)
    e.inflight.release(5000, prefill_pending=True, long=True)
    assert e.inflight.long_prefills == 0 and e.inflight.prefill_tokens == 0


def test_defaults_and_durations():
    g = gate()
    assert (g.min_tokens, g.max_per_endpoint, g.max_wait, g.recheck) == (1024, 2, 10.0, 0.25)


@pytest.mark.parametrize(
    "params, word",
    [({"maxPerEndpoint": 0}, "maxPerEndpoint"), ({"minTokens": 0}, "minTokens"), ({"maxWaits": "1s"}, "maxWaits")],
)
def test_bad_parameters_are_config_errors(params, word):
    with pytest.raises(ConfigError, match=word):
        gate(**params)


def test_bad_duration_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid duration 'ten seconds'"):
        gate(maxWait="ten seconds")
    with pytest.raises(ConfigError, match="invalid duration"):  # the same for the reference's filter
        build_plugin("utilization-detector", "u", {"metricsStalenessThreshold": "soon"})


def test_the_default_config_has_the_gate():
    assert len(load_config(None).plugins_of(PrefillGate)) == 1

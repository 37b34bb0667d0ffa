from __future__ import annotations

import pytest

from epp.datalayer.datastore import Datastore
from epp.datalayer.static_source import load_static_endpoints, parse_static_endpoints


def test_parse_with_engines_ipv6_and_blanks():
    eps = parse_static_endpoints(" 10.0.0.5:8000, model-b.local:9000@sglang,[fd00::1]:8001@triton-tensorrt-llm,")
    assert [(e.name, e.address, e.port, e.engine) for e in eps] == [
        ("10.0.0.5:8000", "10.0.0.5", 8000, "vllm"),
        ("model-b.local:9000", "model-b.local", 9000, "sglang"),
        ("[fd00::1]:8001", "fd00::1", 8001, "triton-tensorrt-llm"),
    ]
    assert eps[2].metrics_url == "http://[fd00::1]:8001/metrics"
    assert eps[0].hostport == "10.0.0.5:8000"


@pytest.mark.parametrize(
    "spec,bad",
    [
        ("10.0.0.1:8000,10.0.0.2", "10.0.0.2"),
        ("host:0", "host:0"),
        ("host:70000", "host:70000"),
        ("host:80x", "host:80x"),
        (":8000", ":8000"),
        ("h:1@", "h:1@"),
        ("h:1@mystery", "h:1@mystery"),
        ("fd00::1:8000", "fd00::1:8000"),
        ("[fd00::1]8000", "[fd00::1]8000"),
        ("a b:1", "a b:1"),
        ("h:1,h:1", "h:1"),
    ],
)
def test_invalid_items_are_named(spec, bad):
    with pytest.raises(ValueError) as info:
        parse_static_endpoints(spec)
    assert repr(bad) in str(info.value)


def test_empty_spec_rejected():
    with pytest.raises(ValueError, match="no endpoints"):
        parse_static_endpoints(" , ")


def test_load_fills_and_syncs():
    ds = Datastore()
    load_static_endpoints(ds, "127.0.0.1:1,127.0.0.1:2@sglang")
    assert ds.synced
    assert [e.name for e in ds.endpoints()] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert ds.by_hostport("127.0.0.1:2").engine == "sglang"

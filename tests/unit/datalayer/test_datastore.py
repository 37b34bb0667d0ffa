from __future__ import annotations

import threading

from epp.datalayer.datastore import Datastore
from epp.datalayer.endpoint import Endpoint


def ep(name: str, addr: str = "10.0.0.1", port: int = 8000, **kw) -> Endpoint:
    return Endpoint(name=name, address=addr, port=port, **kw)


def test_endpoints_tuple_is_cached_until_a_change():
    ds = Datastore()
    a = ds.upsert(ep("a"))
    snap = ds.endpoints()
    assert snap == (a,)
    assert ds.endpoints() is snap  # no rebuild per call
    ds.upsert(ep("b", port=8001))
    assert ds.endpoints() is not snap and [e.name for e in ds.endpoints()] == ["a", "b"]
    snap = ds.endpoints()
    ds.remove("missing")
    assert ds.endpoints() is snap


def test_metadata_update_keeps_identity_metrics_and_inflight():
    ds = Datastore()
    added, removed = [], []
    ds.subscribe(on_add=added.append, on_remove=removed.append)
    a = ds.upsert(ep("a", labels={"v": "1"}))
    a.inflight.add(100)
    snap = ds.endpoints()
    same = ds.upsert(ep("a", labels={"v": "2"}, engine="sglang"))
    assert same is a and a.labels == {"v": "2"} and a.engine == "sglang"
    assert a.inflight.requests == 1
    assert ds.endpoints() is snap
    assert added == [a] and removed == []


def test_address_change_is_remove_then_add():
    ds = Datastore()
    events = []
    ds.subscribe(
        on_add=lambda e: events.append(("add", e.hostport)), on_remove=lambda e: events.append(("remove", e.hostport))
    )
    ds.upsert(ep("a"))
    b = ds.upsert(ep("a", addr="10.0.0.9"))
    assert events == [("add", "10.0.0.1:8000"), ("remove", "10.0.0.1:8000"), ("add", "10.0.0.9:8000")]
    assert ds.get("a") is b
    assert ds.by_hostport("10.0.0.9:8000") is b and ds.by_hostport("10.0.0.1:8000") is None


def test_by_hostport_ipv6_and_remove():
    ds = Datastore()
    v6 = ds.upsert(ep("v6", addr="fd00::1"))
    assert ds.by_hostport("[fd00::1]:8000") is v6
    assert ds.remove("v6") is v6
    assert ds.by_hostport("[fd00::1]:8000") is None and ds.get("v6") is None and len(ds) == 0


def test_synced_replace_all_and_clear():
    ds = Datastore()
    assert not ds.synced
    removed = []
    unsubscribe = ds.subscribe(on_remove=lambda e: removed.append(e.name))
    ds.replace_all([ep("a"), ep("b", port=1)])
    assert ds.synced
    ds.replace_all([ep("b", port=1), ep("c", port=2)])
    assert [e.name for e in ds.endpoints()] == ["b", "c"] and removed == ["a"]
    ds.clear()
    assert ds.endpoints() == () and not ds.synced and removed == ["a", "b", "c"]
    unsubscribe()
    ds.upsert(ep("d"))
    ds.remove("d")
    assert removed == ["a", "b", "c"]


def test_broken_subscriber_does_not_break_writes():
    ds = Datastore()

    def boom(_):
        raise RuntimeError("subscriber bug")

    ds.subscribe(on_add=boom)
    assert ds.upsert(ep("a")).name == "a"


def test_concurrent_writers():
    ds = Datastore()

    def writer(k: int) -> None:
        for i in range(200):
            ds.upsert(ep(f"{k}-{i}", port=i + 1, addr=f"10.0.{k}.1"))
            if i % 2:
                ds.remove(f"{k}-{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ds.endpoints()) == 400
    assert all(ds.by_hostport(e.hostport) is e for e in ds.endpoints())

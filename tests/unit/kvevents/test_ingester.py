"""The ingester against real ZMQ sockets (epp-sim's vLLM-shaped publisher): order, gaps,
restarts, late joins, replay and bad input."""

import time

import pytest
import zmq

from epp.datalayer.kvevents.index import KVBlockIndex
from epp.datalayer.kvevents.ingester import IngestConfig, KVEventIngester
from epp.datalayer.kvevents.keys import request_keys
from epp.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
from epp.sim.kvevents import KVEventPublisher
from epp.stack.processes import free_port

BS = 4
MODEL = "m"
A = list(range(100, 116))  # 4 blocks
B = list(range(200, 216))


def keys(tokens):
    return request_keys(MODEL, tokens, BS)


def store(hashes, tokens, parent=None):
    return BlockStored(hashes, parent, tokens, BS, None, None)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _rebind(make, timeout=3.0):
    """ZMQ closes sockets on its I/O thread: the port may stay taken for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return make()
        except zmq.ZMQError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Rig:
    def __init__(self, replay: bool = True, fmt: str = "array", replay_topic: bool = True):
        self.port = free_port()
        self.replay_port = free_port() if replay else None
        self.fmt, self.replay_topic = fmt, replay_topic
        self.pub = self._publisher()
        self.index = KVBlockIndex(block_size=BS)
        cfg = IngestConfig(
            socket_port=self.port, replay_socket_port=self.replay_port, replay_idle_s=0.5, replay_cooldown_s=0.0
        )
        self.ing = KVEventIngester(self.index, cfg)
        self.ing.start()

    def _publisher(self):
        return KVEventPublisher(
            f"tcp://127.0.0.1:{self.port}",
            f"kv@127.0.0.1:8000@{MODEL}",
            self.fmt,
            replay_endpoint=f"tcp://127.0.0.1:{self.replay_port}" if self.replay_port else None,
            replay_topic=self.replay_topic,
        )

    def subscribe(self):
        self.ing.add("pod", "127.0.0.1", 8000)
        assert wait_for(lambda: self.ing.subscribers == 1)
        time.sleep(0.3)  # ZMQ's slow joiner: the subscription must reach the publisher

    def publish(self, *events):
        self.pub.publish(list(events))
        self.pub.serve_replays()

    def settle(self, cond):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.pub.serve_replays()  # the sim serves replays from its loop; here we do
            if cond():
                return True
            time.sleep(0.01)
        return cond()

    def restart_publisher(self):
        self.pub.close()
        self.pub = _rebind(self._publisher)

    def close(self):
        self.ing.stop()
        self.pub.close()


@pytest.fixture
def rig(request):
    r = Rig(**getattr(request, "param", {}))
    yield r
    r.close()


@pytest.mark.parametrize("rig", [{"fmt": "array"}, {"fmt": "map"}], indirect=True)
def test_stores_and_removes_in_order(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 4.0})
    assert rig.ing.publishing("pod")
    rig.publish(BlockRemoved([3]))
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 2.0})
    rig.publish(AllBlocksCleared())
    assert rig.settle(lambda: rig.index.match(keys(A)) == {})


@pytest.mark.parametrize("rig", [{"replay": False}], indirect=True)
def test_gap_without_replay_drops_the_endpoint_and_rebuilds(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 4.0})
    rig.pub.drop_next = 1
    rig.publish(BlockRemoved([1, 2, 3, 4]))  # lost at the high-water mark: A would stay a false hit
    rig.publish(store([11, 12, 13, 14], B))
    assert rig.settle(lambda: rig.index.match(keys(B)) == {"pod": 4.0})
    assert rig.index.match(keys(A)) == {}
    assert rig.ing.counters.batches["gap"] == 1


@pytest.mark.parametrize("rig", [{"replay_topic": True}, {"replay_topic": False}], indirect=True)
def test_gap_with_replay_recovers_exactly(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))
    rig.pub.drop_next = 2
    rig.publish(BlockRemoved([3, 4]))  # both lost on the live socket, kept for replay
    rig.publish(store([21, 22], B[:8]))
    rig.publish(store([23, 24], B[8:], parent=22))  # its parent came in a lost batch
    assert rig.settle(lambda: rig.index.match(keys(B)) == {"pod": 4.0})
    assert rig.index.match(keys(A)) == {"pod": 2.0}  # the lost remove was replayed
    assert rig.ing.counters.replays["complete"] == 1


def test_engine_restart_clears_the_endpoint(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))
    rig.publish(store([11, 12, 13, 14], B))
    assert rig.settle(lambda: rig.index.match(keys(B)) == {"pod": 4.0})
    rig.restart_publisher()  # a new process: empty cache, numbers from 0 again
    time.sleep(0.5)  # the SUB reconnects by itself
    deadline = time.monotonic() + 5
    while not rig.ing.counters.batches["reset"] and time.monotonic() < deadline:
        rig.publish(store([31], A[:4]))
        time.sleep(0.1)
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 1.0})
    assert rig.index.match(keys(B)) == {}


@pytest.mark.parametrize("rig", [{"replay": False}], indirect=True)
def test_a_restart_after_one_batch_is_a_reset_not_a_duplicate(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))  # batch 0
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 4.0})
    rig.restart_publisher()
    time.sleep(0.5)
    rig.publish(store([21, 22, 23, 24], B))  # batch 0 again, from the new process
    assert rig.settle(lambda: rig.index.match(keys(B)) == {"pod": 4.0})
    assert rig.index.match(keys(A)) == {}  # the old process's blocks went with it
    assert rig.ing.counters.batches["reset"] == 1 and rig.ing.counters.batches["duplicate"] == 0


def test_the_same_batch_twice_is_a_duplicate(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 4.0})
    rig.pub._sock.send_multipart([b"kv@127.0.0.1:8000@m", (0).to_bytes(8, "big"), rig.pub._buffer[-1][1]])
    assert rig.settle(lambda: rig.ing.counters.batches["duplicate"] == 1)
    assert rig.index.match(keys(A)) == {"pod": 4.0} and rig.ing.counters.batches["reset"] == 0


def test_late_join_replays_history(rig):
    rig.publish(store([1, 2], A[:8]))  # nobody listens yet
    rig.publish(store([3, 4], A[8:], parent=2))
    rig.subscribe()
    rig.publish(BlockRemoved([4]))  # first live batch is number 2: replay 0..1 first
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 3.0})
    assert rig.ing.counters.batches["late-join"] == 1


def test_dead_replay_socket_falls_back_to_rebuild():
    r = Rig(replay=True)
    try:
        r.pub.close()
        r.pub = _rebind(lambda: KVEventPublisher(f"tcp://127.0.0.1:{r.port}", f"kv@x:1@{MODEL}"))  # no ROUTER
        r.subscribe()
        r.publish(store([1, 2, 3, 4], A))
        assert r.settle(lambda: r.index.match(keys(A)) == {"pod": 4.0})
        r.pub.drop_next = 1
        r.publish(BlockRemoved([1]))
        r.publish(store([11, 12, 13, 14], B))
        assert r.settle(lambda: r.index.match(keys(B)) == {"pod": 4.0})
        assert r.index.match(keys(A)) == {}
        assert r.ing.counters.replays["failed"] == 1
    finally:
        r.close()


def test_garbage_is_counted_and_the_stream_goes_on(rig):
    rig.subscribe()
    ctx = zmq.Context.instance()
    # A second publisher on another port would not reach the ingester: speak on the same socket.
    sock = rig.pub._sock
    sock.send_multipart([b"kv@x", (0).to_bytes(8, "big"), b"\xc1garbage"])
    sock.send_multipart([b"kv@x", b"short", b""])
    sock.send_multipart([b"kv@x", (1).to_bytes(8, "big")])
    rig.pub._seq = 1
    rig.publish(store([1, 2, 3, 4], A))
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 4.0})
    assert rig.ing.counters.decode_errors == 1 and rig.ing.counters.bad_frames == 2
    assert ctx is not None


def test_removing_the_endpoint_forgets_it(rig):
    rig.subscribe()
    rig.publish(store([1, 2, 3, 4], A))
    assert rig.settle(lambda: rig.index.match(keys(A)) == {"pod": 4.0})
    rig.ing.remove("pod")
    assert rig.settle(lambda: rig.ing.subscribers == 0 and rig.index.match(keys(A)) == {})
    assert not rig.ing.publishing("pod")


class CentralRig:
    """llm-d's `zmqEndpoint`: the ingester binds one SUB socket, publishers connect to it and
    are told apart by their topics."""

    def __init__(self, discover_pods: bool = False):
        self.port = free_port()
        self.index = KVBlockIndex(block_size=BS)
        cfg = IngestConfig(zmq_endpoint=f"tcp://127.0.0.1:{self.port}", discover_pods=discover_pods)
        self.ing = KVEventIngester(self.index, cfg)
        self.ing.start()
        self.pubs = {}

    def publisher(self, host: str, port: int = 8000) -> KVEventPublisher:
        pub = KVEventPublisher(f"tcp://127.0.0.1:{self.port}", f"kv@{host}:{port}@{MODEL}", connect=True)
        self.pubs[host] = pub
        return pub

    def close(self):
        self.ing.stop()
        for pub in self.pubs.values():
            pub.close()


@pytest.fixture
def central():
    r = CentralRig()
    yield r
    r.close()


def _publish_until(pub, events, cond, timeout=5.0):
    """A connecting PUB drops what it sends before its connection is up (ZMQ's slow joiner):
    send, then resend a fresh copy under the next sequence number until the index shows it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish(list(events))
        if wait_for(cond, 0.3):
            return True
    return cond()


def test_publishers_that_connect_to_the_central_socket_reach_their_own_endpoints(central):
    central.ing.add("pod-a", "127.0.0.2", 8000)
    central.ing.add("pod-b", "127.0.0.3", 8000)
    a, b = central.publisher("127.0.0.2"), central.publisher("127.0.0.3")
    assert _publish_until(a, [store([1, 2, 3, 4], A)], lambda: central.index.match(keys(A)) == {"pod-a": 4.0})
    assert _publish_until(b, [store([5, 6, 7, 8], B)], lambda: central.index.match(keys(B)) == {"pod-b": 4.0})
    assert central.index.match(keys(A)) == {"pod-a": 4.0}  # b's events did not land on a
    assert central.ing.publishing("pod-a") and central.ing.publishing("pod-b")
    # Per endpoint sequence numbers and removes, as with a socket per endpoint.
    b.publish([BlockRemoved([7])])
    assert wait_for(lambda: central.index.match(keys(B)) == {"pod-b": 2.0})
    assert central.index.match(keys(A)) == {"pod-a": 4.0}


def test_a_topic_that_names_no_endpoint_is_counted_and_dropped(central):
    central.ing.add("pod-a", "127.0.0.2", 8000)
    stranger = central.publisher("127.0.0.9")
    assert _publish_until(stranger, [store([1, 2, 3, 4], A)], lambda: central.ing.counters.unknown_topics > 0)
    assert central.index.match(keys(A)) == {}
    # The same server on another port is another endpoint.
    other_port = central.publisher("127.0.0.2", 9000)
    before = central.ing.counters.unknown_topics
    assert _publish_until(other_port, [store([1, 2, 3, 4], A)], lambda: central.ing.counters.unknown_topics > before)
    assert central.index.match(keys(A)) == {}
    # Once its endpoint is known, the server's events count (from a late join: what follows).
    central.ing.add("pod-9", "127.0.0.9", 8000)
    assert _publish_until(stranger, [store([1, 2, 3, 4], A)], lambda: central.index.match(keys(A)) == {"pod-9": 4.0})


def test_a_removed_endpoint_stops_matching_its_topic(central):
    central.ing.add("pod-a", "127.0.0.2", 8000)
    a = central.publisher("127.0.0.2")
    assert _publish_until(a, [store([1, 2, 3, 4], A)], lambda: central.index.match(keys(A)) == {"pod-a": 4.0})
    central.ing.remove("pod-a")
    assert wait_for(lambda: central.index.match(keys(A)) == {})
    before = central.ing.counters.unknown_topics
    assert _publish_until(a, [store([1, 2, 3, 4], A)], lambda: central.ing.counters.unknown_topics > before)
    assert central.index.match(keys(A)) == {}


def test_a_central_address_that_cannot_be_bound_fails_the_start_with_its_reason():
    taken = CentralRig()
    try:
        ing = KVEventIngester(KVBlockIndex(block_size=BS), IngestConfig(zmq_endpoint=taken.ing.config.zmq_endpoint))
        with pytest.raises(OSError, match=r"zmqEndpoint 'tcp://127\.0\.0\.1:\d+'"):
            ing.start()
        ing.stop()  # nothing was left running
    finally:
        taken.close()


def test_central_and_per_endpoint_subscriptions_work_side_by_side():
    rig = Rig(replay=False)
    try:
        cfg = IngestConfig(socket_port=rig.port, zmq_endpoint=f"tcp://127.0.0.1:{free_port()}")
        ing = KVEventIngester(KVBlockIndex(block_size=BS), cfg)
        ing.start()
        try:
            ing.add("dialled", "127.0.0.1", 8000)  # rig's publisher binds; we dial it
            ing.add("connecting", "127.0.0.5", 8000)
            time.sleep(0.3)
            pub = KVEventPublisher(cfg.zmq_endpoint, f"kv@127.0.0.5:8000@{MODEL}", connect=True)
            try:
                assert _publish_until(
                    pub, [store([5, 6, 7, 8], B)], lambda: ing.index.match(keys(B)) == {"connecting": 4.0}
                )
                rig.publish(store([1, 2, 3, 4], A))
                assert wait_for(lambda: ing.index.match(keys(A)) == {"dialled": 4.0})
            finally:
                pub.close()
        finally:
            ing.stop()
    finally:
        rig.close()

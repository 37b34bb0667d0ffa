"""The KV-event ingester: one ZMQ SUB socket per endpoint, and/or one central SUB socket that
publishers connect to (llm-d's `zmqEndpoint`), all served by one thread.

Cold path, kept off the event loop: decoding msgpack and hashing token chunks costs CPU in
proportion to the pool's token rate, and the thread blocks in zmq's poll (GIL released)
when there is nothing to read. The scheduling cycle only reads the index.

Per endpoint, in the order its publisher sent them:
* every batch is checked against its sequence number (sequence.py);
* a gap, a restart or a late join asks the endpoint's replay socket (vLLM's ROUTER,
  `replay_endpoint`) for the missing batches when one is configured; otherwise — or when
  the replay fails — the endpoint's entries are dropped and rebuilt from the events that
  follow (a restarted engine's cache is empty anyway);
* AllBlocksCleared and endpoint removal clear the endpoint.

Two ways to reach the publishers, as llm-d has them: `discover_pods` dials each endpoint's
PUB socket (vLLM binds `tcp://*:5557`); `zmq_endpoint` binds one SUB socket here that every
publisher connects to (vLLM's endpoint set to this address: it connects when the address has
no wildcard). On the central socket an endpoint is known only by its topic,
`kv@<ip>:<port>@<model>`, matched to the endpoint's address and port; batches from a topic
that names no known endpoint are counted and dropped (its endpoint has not been seen yet, or
the publisher's topic is misconfigured). Sequence numbers, replay and clearing work the same
either way: they are per endpoint, not per socket.

Replay framing (kvevents.md §1): request [b"", start seq u64 BE]; replies
[b"", seq, payload] (vLLM < 0.26) or [b"", topic, seq, payload], ended by seq = 2^64-1
with an empty payload. Runs in this thread with a per-attempt idle limit, so a dead replay
socket costs that endpoint a few seconds of staleness, never the others' events for longer
than the limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zmq

from epp.datalayer.kvevents.decode import DecodeError, decode_batch
from epp.datalayer.kvevents.index import KVBlockIndex
from epp.datalayer.kvevents.sequence import Seq, SeqTracker

log = logging.getLogger(__name__)

END_OF_REPLAY = (1 << 64) - 1
POLL_MS = 100


@dataclass(frozen=True)
class IngestConfig:
    """Where each endpoint publishes. llm-d's names where they exist (podDiscoveryConfig):
    `socket_port` / `replay_socket_port` are fixed ports on the endpoint's address (one pod,
    one IP); the `_offset` forms add to the endpoint's own port instead, for servers that
    share an address (static endpoints, a local fleet)."""

    socket_port: int = 5557
    socket_port_offset: int | None = None
    replay_socket_port: int | None = None
    replay_socket_port_offset: int | None = None
    topic_filter: str = "kv@"
    model_name: str = ""  # root of the keys when the topic names no model
    zmq_endpoint: str | None = None  # bind one SUB socket here for publishers that connect
    discover_pods: bool = True  # dial each endpoint's own publisher
    replay_idle_s: float = 2.0
    replay_max_s: float = 120.0
    replay_cooldown_s: float = 30.0

    def sub_address(self, address: str, port: int) -> str:
        p = port + self.socket_port_offset if self.socket_port_offset is not None else self.socket_port
        return f"tcp://{_host(address)}:{p}"

    def replay_address(self, address: str, port: int) -> str | None:
        if self.replay_socket_port_offset is not None:
            return f"tcp://{_host(address)}:{port + self.replay_socket_port_offset}"
        if self.replay_socket_port is not None:
            return f"tcp://{_host(address)}:{self.replay_socket_port}"
        return None


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def pod_id(address: str, port: int | str) -> str:
    """The `<ip>:<port>` a topic names an endpoint by (IPv6 without brackets)."""
    return f"{address.strip('[]')}:{port}"


def topic_pod(topic: bytes) -> str:
    """kv@<ip>:<port>@<model> -> '<ip>:<port>' ('' when the topic does not have that shape)."""
    parts = topic.decode("utf-8", "replace").split("@", 2)
    if len(parts) < 2 or parts[0] != "kv":
        return ""
    host, sep, port = parts[1].rpartition(":")
    return pod_id(host, port) if sep and host and port.isdigit() else ""


def topic_model(topic: bytes) -> str:
    """kv@<ip>:<port>@<model> -> model ('' when the topic names none)."""
    parts = topic.decode("utf-8", "replace").split("@", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "kv" else ""


@dataclass
class IngestCounters:
    batches: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Seq})
    decode_errors: int = 0
    bad_frames: int = 0
    replays: dict[str, int] = field(default_factory=lambda: {"complete": 0, "failed": 0})
    replayed_batches: int = 0
    unknown_topics: int = 0  # central socket: batches whose topic names no known endpoint


@dataclass
class _Sub:
    name: str
    sock: zmq.Socket | None  # None: the endpoint reaches us through the central socket only
    replay: str | None
    pod: str = ""
    last_payload: int = 0  # hash of the last batch applied: tells a restart from a true duplicate
    seq: SeqTracker = field(default_factory=SeqTracker)
    seen: bool = False  # any valid batch: the endpoint publishes, its entries are precise
    cooldown_until: float = 0.0


class KVEventIngester:
    def __init__(
        self, index: KVBlockIndex, config: IngestConfig, on_batch: Callable[[str, Seq], None] | None = None
    ) -> None:
        self.index = index
        self.config = config
        self.counters = IngestCounters()
        self._on_batch = on_batch
        self._ctx: zmq.Context | None = None  # made by start(): a config that is only validated opens nothing
        self._cmds: queue.SimpleQueue[tuple[str, str, str, int]] = queue.SimpleQueue()
        self._subs: dict[str, _Sub] = {}
        self._by_sock: dict[zmq.Socket, _Sub] = {}
        self._by_pod: dict[str, _Sub] = {}  # '<ip>:<port>' -> endpoint, for the central socket
        self._central: zmq.Socket | None = None
        self._publishing: set[str] = set()  # read by the hot path: endpoints with live events
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- any thread ------------------------------------------------------------------------------

    def add(self, name: str, address: str, port: int) -> None:
        self._cmds.put(("add", name, address, port))

    def remove(self, name: str) -> None:
        self._cmds.put(("remove", name, "", 0))

    def publishing(self, name: str) -> bool:
        return name in self._publishing

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def start(self) -> None:
        import zmq  # loaded only when KV events are configured: the default EPP never loads libzmq

        if self._thread is None:
            self._ctx = zmq.Context()
            if self.config.zmq_endpoint:
                # Bound here, not in the thread, so a bad or taken address fails the start
                # with its reason; the thread then owns the socket (handed over at start()).
                sock = self._ctx.socket(zmq.SUB)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, 1_000_000)
                sock.setsockopt(zmq.SUBSCRIBE, self.config.topic_filter.encode())
                try:
                    sock.bind(self.config.zmq_endpoint)
                except zmq.ZMQError as exc:
                    sock.close(linger=0)
                    self._ctx.term()
                    self._ctx = None
                    # OSError: what the runner reports for any address it cannot bind.
                    raise OSError(f"kvEventsConfig.zmqEndpoint {self.config.zmq_endpoint!r}: {exc}") from None
                self._central = sock
            self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for sub in list(self._subs.values()):
            if sub.sock is not None:
                sub.sock.close(linger=0)
        self._subs.clear()
        self._by_pod.clear()
        if self._central is not None:
            self._central.close(linger=0)
            self._central = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # ---- the ingester thread ------------------------------------------------------------------

    def _run(self) -> None:
        import zmq

        poller = zmq.Poller()
        central = self._central
        if central is not None:
            poller.register(central, zmq.POLLIN)
        while not self._stop.is_set():
            self._commands(poller)
            try:
                if self._by_sock or central is not None:
                    ready = poller.poll(POLL_MS)
                else:
                    time.sleep(POLL_MS / 1000)
                    ready = []
            except zmq.ZMQError:
                continue
            for sock, _ev in ready:
                sub = self._by_sock.get(sock)
                if sub is None and sock is not central:
                    continue
                # Drain what is there, bounded, so one busy endpoint cannot starve the rest
                # (the central socket carries every endpoint: a larger share).
                for _ in range(256 if sub is not None else 4096):
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    src = sub if sub is not None else self._by_pod.get(topic_pod(frames[0]) if frames else "")
                    if src is None:
                        self.counters.unknown_topics += 1
                        continue
                    try:
                        self._live(src, frames)
                    except Exception:  # never let one endpoint's stream stop the thread
                        log.exception("kv events from %s: unexpected error", src.name)

    def _commands(self, poller: zmq.Poller) -> None:
        import zmq

        while True:
            try:
                op, name, address, port = self._cmds.get_nowait()
            except queue.Empty:
                return
            old = self._subs.pop(name, None)
            if old is not None:
                if old.sock is not None:
                    poller.unregister(old.sock)
                    self._by_sock.pop(old.sock, None)
                    old.sock.close(linger=0)
                if self._by_pod.get(old.pod) is old:
                    del self._by_pod[old.pod]
                self._publishing.discard(name)
            if op == "remove":
                self.index.remove_endpoint(name)
                continue
            self.index.remove_endpoint(name)  # a re-added endpoint starts from nothing
            self.index.add_endpoint(name, self.config.model_name)
            assert self._ctx is not None
            sock = None
            if self.config.discover_pods:
                sock = self._ctx.socket(zmq.SUB)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, 100_000)
                sock.setsockopt(zmq.RECONNECT_IVL, 200)
                sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
                sock.setsockopt(zmq.SUBSCRIBE, self.config.topic_filter.encode())
                sock.connect(self.config.sub_address(address, port))
            sub = _Sub(name, sock, self.config.replay_address(address, port), pod_id(address, port))
            self._subs[name] = sub
            self._by_pod[sub.pod] = sub
            if sock is not None:
                self._by_sock[sock] = sub
                poller.register(sock, zmq.POLLIN)

    def _live(self, sub: _Sub, frames: list[bytes]) -> None:
        if len(frames) != 3 or len(frames[1]) != 8:
            self.counters.bad_frames += 1
            return
        topic, seq_b, payload = frames
        seq = int.from_bytes(seq_b, "big")
        kind = sub.seq.classify(seq)
        if kind is Seq.DUPLICATE and hash(payload) != sub.last_payload:
            # The same number with other content: an engine that restarted after one batch
            # (its numbers start over at 0), not the same batch twice.
            kind = Seq.RESET
        c = self.counters
        c.batches[kind.value] += 1
        if self._on_batch is not None:
            self._on_batch(sub.name, kind)
        if kind is Seq.DUPLICATE:
            return
        if not sub.seen:
            model = topic_model(topic) or self.config.model_name
            self.index.add_endpoint(sub.name, model)
        if kind is Seq.RESET:
            # The engine restarted: its cache is empty and its numbers start over.
            self.index.clear_endpoint(sub.name)
            sub.seq.last = None
            self._replay(sub, 0, seq)
        elif kind is Seq.LATE_JOIN:
            self._replay(sub, 0, seq)  # without one, children of blocks stored before we joined drop
        elif kind is Seq.GAP:
            missed = (sub.seq.last or 0) + 1
            if not self._replay(sub, missed, seq):
                # Lost removes would leave false hits: drop what we hold, rebuild from here.
                self.index.clear_endpoint(sub.name)
                log.info(
                    "kv events from %s: batches %d..%d lost; its entries rebuild from here", sub.name, missed, seq - 1
                )
        self._apply(sub, seq, payload)

    def _apply(self, sub: _Sub, seq: int, payload: bytes) -> None:
        last = sub.seq.last
        if last is not None and seq <= last:
            return  # already applied (from a replay)
        try:
            events = decode_batch(payload)
        except DecodeError as exc:
            self.counters.decode_errors += 1
            log.debug("kv events from %s: %s", sub.name, exc)
            sub.seq.advance(seq)
            return
        self.index.apply(sub.name, events)
        sub.seq.advance(seq)
        sub.last_payload = hash(payload)
        if not sub.seen:
            sub.seen = True
            self._publishing.add(sub.name)

    def _replay(self, sub: _Sub, start: int, upto: int) -> bool:
        """Fetch and apply batches [start, upto) from the endpoint's replay socket."""
        import zmq

        if sub.replay is None or start >= upto:
            return False
        now = time.monotonic()
        if now < sub.cooldown_until:
            return False
        c = self.counters
        assert self._ctx is not None
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        ok = False
        try:
            dealer.connect(sub.replay)
            dealer.send_multipart([b"", start.to_bytes(8, "big")])
            deadline = now + self.config.replay_max_s
            while time.monotonic() < deadline and not self._stop.is_set():
                if not dealer.poll(int(self.config.replay_idle_s * 1000)):
                    break
                frames = dealer.recv_multipart()
                if len(frames) not in (3, 4) or frames[0] != b"":
                    continue
                seq_b, payload = frames[-2], frames[-1]
                if len(seq_b) != 8:
                    continue
                seq = int.from_bytes(seq_b, "big")
                if seq == END_OF_REPLAY:
                    ok = True
                    break
                if seq >= upto:
                    continue  # the live socket delivers these
                last = sub.seq.last
                if seq > (start - 1 if last is None else last) + 1:
                    break  # the publisher's buffer no longer reaches back that far
                c.replayed_batches += 1
                self._apply(sub, seq, payload)
        finally:
            dealer.close(linger=0)
        if ok and sub.seq.last is not None and sub.seq.last >= upto - 1:
            c.replays["complete"] += 1
            return True
        c.replays["failed"] += 1
        sub.cooldown_until = time.monotonic() + self.config.replay_cooldown_s
        log.warning("kv events from %s: replay from %d failed; its entries rebuild from live events", sub.name, start)
        return False

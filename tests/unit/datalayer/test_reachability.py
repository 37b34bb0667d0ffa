"""Dead servers get no picks; they come back when they answer again (issue 13, defect 1).

The policy's rules on their own, then an in-process EPP scraping real HTTP servers at the
default interval, with picks read off the ext_proc answers.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from epp.datalayer.endpoint import Endpoint
from epp.datalayer.reachability import ReachabilityPolicy, stale_after
from epp.datalayer.vllmpage import VllmState, vllm_page
from epp.options import Options
from epp.runner import Epp
from epp.scheduling.config import load_config
from epp.stack.processes import free_port, free_ports
from tests.support.extproc_client import Conversation, request_body, request_headers, response_headers, set_headers
from tests.support.inproc import serving


def ep(name: str = "a") -> Endpoint:
    return Endpoint(name=name, address="127.0.0.1", port=1)


def test_stale_after_is_a_few_scrapes_and_never_under_a_second():
    assert stale_after(0.05) == 1.0
    assert stale_after(2.0) == 8.0


def test_policy_rules():
    p = ReachabilityPolicy(stale_after=1.0)
    now = 100.0
    fresh, never, refused_once, refused, stale, late = (ep(n) for n in "abcdef")
    fresh.metrics.update_time = now - 0.5
    refused_once.reach.scrape_failures = 1
    refused.reach.scrape_failures = 2
    stale.metrics.update_time = now - 1.5
    stale.reach.last_scrape_failed = True
    late.metrics.update_time = now - 1.5  # old, but its last scrape worked: the EPP was slow, not the server
    assert [p.reachable(e, now) for e in (fresh, never, refused_once, refused, stale, late)] == [
        True,
        True,
        True,
        False,
        False,
        True,
    ]
    assert list(p.usable([fresh, refused, never], now)) == [fresh, never]
    # Nothing reachable: keep them all rather than answer 503 for a monitoring fault.
    assert list(p.usable([refused, stale], now)) == [refused, stale]


def test_request_failures_eject_for_a_while_then_probation():
    p = ReachabilityPolicy(request_failures=3, ejection=1.0)
    e = ep()
    for status in (503, 502):
        p.request_finished(e, status, 0.0)
    assert p.reachable(e, 0.0)
    p.request_finished(e, 504, 0.0)
    assert not p.reachable(e, 0.5)
    assert p.reachable(e, 1.01)
    p.request_finished(e, 503, 1.1)  # on probation: one more failure is enough
    assert not p.reachable(e, 1.2)
    p.request_finished(e, 200, 2.2)
    p.request_finished(e, 503, 2.3)
    assert p.reachable(e, 2.3)  # a success cleared the count
    p.request_finished(e, 400, 2.4)  # a client error says nothing about the server
    p.request_finished(e, 0, 2.4)  # nor does a stream that ended without a response
    assert e.reach.request_failures == 0


class PageServer:
    """A /metrics server on 127.0.0.1 that can be stopped, started again, or made to hang."""

    def __init__(self, port: int, queue: int = 0) -> None:
        self.port, self.queue, self.hang = port, queue, False
        self.runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.hang:
            await asyncio.sleep(3600)
        return web.Response(text=vllm_page(VllmState(waiting=self.queue)))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def pick(ch, failing: str | None = None) -> str:
    """One request's destination; when it is `failing`, the server's answer is a 503."""
    conv = Conversation(ch)
    await conv.send(request_headers())
    await conv.send(request_body(orjson.dumps({"model": "m", "prompt": "hi"})))
    dest = set_headers((await conv.recv()).request_headers.response)["x-gateway-destination-endpoint"]
    await conv.recv()  # the body
    await conv.send(response_headers({":status": "503" if dest == failing else "200"}, eos=True))
    await conv.close()
    return dest


async def picks(ch, n: int) -> list[str]:
    return [await pick(ch) for _ in range(n)]


async def until(cond, timeout: float) -> float:
    """Seconds until `cond()` (an awaitable factory) is true; fails after `timeout`."""
    start = time.monotonic()
    while not await cond():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def epp_for(ports: list[int], config: str | None = None) -> Epp:
    endpoints = [Endpoint(name=f"127.0.0.1:{p}", address="127.0.0.1", port=p) for p in ports]
    o = Options(
        grpc_port=free_port(),
        grpc_health_port=free_port(),
        metrics_port=free_port(),
        secure_serving=False,
        static_endpoints="x",
        refresh_metrics_interval=0.05,
    )
    return Epp(o, load_config(config), endpoints)


async def test_dead_server_gets_no_picks_and_returns_when_it_answers():
    live_port, dead_port = free_ports(2)
    live = PageServer(live_port, queue=3)  # busier: the dead one would win every pick on load
    dead = PageServer(dead_port, queue=0)
    await live.start()
    await dead.start()
    async with serving(epp_for([live_port, dead_port])) as (epp, ch):
        dead_hp = f"127.0.0.1:{dead_port}"
        await until(lambda: _scraped(epp, 2), 5)
        assert dead_hp in await picks(ch, 10)
        await dead.stop()
        await until(lambda: _excluded(ch, dead_hp), 2)
        assert dead_hp not in await picks(ch, 30)
        reachable = {
            hp: epp.metrics.registry.get_sample_value("epp_endpoint_reachable", {"endpoint": hp})
            for hp in (dead_hp, f"127.0.0.1:{live_port}")
        }
        assert reachable == {dead_hp: 0.0, f"127.0.0.1:{live_port}": 1.0}
        await dead.start()
        back = await until(lambda: _picked(ch, dead_hp), 5)
        assert back < 2.0
    await live.stop()
    await dead.stop()


async def test_hung_server_is_left_out_once_its_metrics_are_stale():
    ports = free_ports(2)
    servers = [PageServer(ports[0], queue=5), PageServer(ports[1], queue=0)]
    for s in servers:
        await s.start()
    async with serving(epp_for(ports, config=_REFERENCE_LIKE)) as (epp, ch):
        hung_hp = f"127.0.0.1:{ports[1]}"
        await until(lambda: _scraped(epp, 2), 5)
        servers[1].hang = True
        await until(lambda: _excluded(ch, hung_hp), 3)
        assert hung_hp not in await picks(ch, 30)
    for s in servers:
        await s.stop()


async def test_server_answering_503_is_ejected_whatever_its_metrics_say():
    ports = free_ports(2)
    servers = [PageServer(ports[0], queue=5), PageServer(ports[1], queue=0)]
    for s in servers:
        await s.start()
    async with serving(epp_for(ports)) as (epp, ch):
        bad = f"127.0.0.1:{ports[1]}"
        epp.director.reachability.ejection = 60.0  # longer than the test: no probation in between
        await until(lambda: _scraped(epp, 2), 5)
        sent = [await pick(ch, failing=bad) for _ in range(40)]
        # It looks idle, so it takes the picks until the third consecutive failure, then none.
        assert sent[:3] == [bad] * 3
        assert bad not in sent[3:]
    for s in servers:
        await s.stop()


# The scorer set of the reference's default profile, which reads no staleness itself.
_REFERENCE_LIKE = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
  - pluginRef: max-score-picker
"""


async def _scraped(epp: Epp, n: int) -> bool:
    return sum(1 for e in epp.datastore.endpoints() if e.metrics.update_time) >= n


async def _excluded(ch, hostport: str) -> bool:
    return hostport not in await picks(ch, 5)


async def _picked(ch, hostport: str) -> bool:
    return hostport in await picks(ch, 3)


def test_staleness_follows_the_scrapers_current_interval():
    interval = [0.05]
    p = ReachabilityPolicy(scrape_interval=lambda: interval[0])
    old, other = ep("old"), ep("other")
    old.metrics.update_time, old.reach.last_scrape_failed = 100.0, True
    assert list(p.usable([old, other], 102.0)) == [other]  # 2 s > 1 s at a 50 ms interval
    interval[0] = 1.0  # a big pool: the scraper stretched its interval to 1 s
    assert list(p.usable([old, other], 102.0)) == [old, other]  # 2 s < 4 s

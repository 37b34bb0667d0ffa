"""HTTP GET of /metrics pages through one shared keep-alive client.

Two interchangeable backends, because the scrape loop is the EPP's biggest steady CPU cost
(32 endpoints x 20 scrapes/s) and the client library dominates it. Measured with
`python -m epp.datalayer.scrapebench` (32 vLLM pages of 55 KB, 50 ms, 2-core AMD EPYC):
aiohttp ~350-400 us CPU per scrape, 22-26 % of one core; httpx ~1,500 us per scrape,
90-97 % of one core and falling behind the 640 scrapes/s schedule. aiohttp does the HTTP
parsing in C, httpx/httpcore in Python, so DEFAULT_BACKEND is aiohttp; httpx stays
selectable (`backend="httpx"`) and is covered by the same tests. Details: docs/datalayer.md.

Both ask for `Accept-Encoding: identity`: vLLM serves /metrics through prometheus_client,
which gzips whenever the client accepts it — on a LAN, compressing 50 KB twenty times a
second costs the model server CPU and us a decompression, to save bandwidth nobody lacks.
"""

from __future__ import annotations

from typing import Protocol

_HEADERS = {"Accept-Encoding": "identity", "Accept": "text/plain"}
# The reference shares one client with MaxIdleConns 5000 and 2 per host; same sizing here:
# one scraper per endpoint needs one connection per host, the second covers a reconnect.
MAX_CONNECTIONS = 5000
PER_HOST = 2


class FetchError(Exception):
    """The server answered, but not with a usable page (non-200 status)."""


class Fetcher(Protocol):
    async def get(self, url: str, timeout: float) -> bytes: ...

    async def aclose(self) -> None: ...


class AiohttpFetcher:
    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._session: aiohttp.ClientSession | None = None

    def _open(self):  # created lazily: a ClientSession must be made inside the event loop
        aiohttp = self._aiohttp
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=PER_HOST, keepalive_timeout=30, ttl_dns_cache=10
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=_HEADERS, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        return self._session

    async def get(self, url: str, timeout: float) -> bytes:
        session = self._session or self._open()
        async with session.get(url, timeout=self._aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status}")
            return body

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxFetcher:
    def __init__(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            headers=_HEADERS,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            timeout=10.0,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not sit between us and pods
        )

    async def get(self, url: str, timeout: float) -> bytes:
        resp = await self._client.get(url, timeout=timeout)
        if resp.status_code != 200:
            raise FetchError(f"HTTP {resp.status_code}")
        return resp.content

    async def aclose(self) -> None:
        await self._client.aclose()


BACKENDS = {"aiohttp": AiohttpFetcher, "httpx": HttpxFetcher}
DEFAULT_BACKEND = "aiohttp"


def make_fetcher(backend: str = DEFAULT_BACKEND) -> Fetcher:
    try:
        return BACKENDS[backend]()
    except KeyError:
        raise ValueError(f"unknown HTTP backend {backend!r} (choose from {sorted(BACKENDS)})") from None

"""HTTP(S) GET of /metrics pages through one shared keep-alive client, size-capped.

Two interchangeable backends, because the scrape loop is the EPP's biggest steady CPU cost
(32 endpoints x 20 scrapes/s) and the client library dominates it. Measured with
`python -m epp.datalayer.scrapebench` (32 vLLM pages of 55 KB, 50 ms, 2-core AMD EPYC):
aiohttp ~350-500 us CPU per scrape, 22-30 % of one core; httpx ~1,500 us per scrape,
90-97 % of one core and falling behind the 640 scrapes/s schedule. aiohttp does the HTTP
parsing in C, httpx/httpcore in Python, so DEFAULT_BACKEND is aiohttp; httpx stays
selectable (`backend="httpx"`) and is covered by the same tests. Details: docs/datalayer.md.

Both ask for `Accept-Encoding: identity`: vLLM serves /metrics through prometheus_client,
which gzips whenever the client accepts it — on a LAN, compressing 50 KB twenty times a
second costs the model server CPU and us a decompression, to save bandwidth nobody lacks.

Bodies are read in chunks and abandoned past `max_bytes` (PageTooLarge): a server that
streams an endless page would otherwise grow the EPP by whatever arrives before the scrape
timeout (743 MB in 7 s on loopback). What a scrape holds is then at most `max_bytes` plus
one chunk; an abandoned response's connection is closed, never reused.
"""

from __future__ import annotations

import ssl
from typing import Protocol

_HEADERS = {"Accept-Encoding": "identity", "Accept": "text/plain"}
# The reference shares one client with MaxIdleConns 5000 and 2 per host; same sizing here:
# one scraper per endpoint needs one connection per host, the second covers a reconnect.
MAX_CONNECTIONS = 5000
PER_HOST = 2
# vLLM pages are ~55 KB, sglang's a few KB; 16 MiB leaves room for hundreds of LoRA adapters
# or label-heavy custom exporters while keeping an endless page well under 50 MB of EPP memory.
DEFAULT_MAX_PAGE_BYTES = 16 * 1024 * 1024
CHUNK = 64 * 1024


class FetchError(Exception):
    """The server answered, but not with a usable page (status, size, TLS)."""


class PageTooLarge(FetchError):
    def __init__(self, limit: int, read: int, declared: int | None = None) -> None:
        self.limit, self.read, self.declared = limit, read, declared
        if declared is not None:
            what = f"Content-Length {declared} bytes"
        else:
            what = f"more than {limit} bytes (stopped reading after {read})"
        super().__init__(f"metrics page too large: {what}, limit {limit} bytes")


class TlsError(FetchError):
    """The TCP peer answered but the TLS handshake failed: untrusted certificate, or not TLS at all.

    A FetchError, not a transport failure: the server is there, only our scrape settings
    (scheme, trust) do not fit it, and that must not make it look dead to the candidate filter.
    """


class Fetcher(Protocol):
    async def get(self, url: str, timeout: float) -> bytes: ...

    async def aclose(self) -> None: ...


def client_tls(insecure_skip_verify: bool) -> ssl.SSLContext:
    """The client context for https scrapes. Verification uses the system trust store
    (OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR for a private CA)."""
    ctx = ssl.create_default_context()
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # aiohttp's wrappers subclass ssl.SSLError themselves but keep the real one inside.
        inner = getattr(e, "certificate_error", None) or getattr(e, "os_error", None)
        if isinstance(inner, ssl.SSLError):
            return inner
        if isinstance(e, ssl.SSLError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _tls_error(url: str, cause: ssl.SSLError) -> TlsError:
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = getattr(cause, "verify_message", "") or getattr(cause, "reason", "") or str(cause)
        return TlsError(
            f"TLS certificate of {url} not trusted: {why} "
            f"(trust its CA, or set --model-server-metrics-https-insecure-skip-verify)"
        )
    reason = getattr(cause, "reason", "") or str(cause)
    hint = ""
    if reason == "WRONG_VERSION_NUMBER":
        hint = " (the server speaks plain http? see --model-server-metrics-scheme)"
    return TlsError(f"TLS handshake with {url} failed: {reason}{hint}")


def _check_declared(length: int | None, limit: int) -> None:
    if length is not None and length > limit:
        raise PageTooLarge(limit, 0, length)


class AiohttpFetcher:
    def __init__(self, max_bytes: int = DEFAULT_MAX_PAGE_BYTES, insecure_skip_verify: bool = True) -> None:
        import aiohttp

        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive (got {max_bytes})")
        self._aiohttp = aiohttp
        self.max_bytes = max_bytes
        self._tls = client_tls(insecure_skip_verify)
        self._session: aiohttp.ClientSession | None = None

    def _open(self):  # created lazily: a ClientSession must be made inside the event loop
        aiohttp = self._aiohttp
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, limit_per_host=PER_HOST, keepalive_timeout=30, ttl_dns_cache=10, ssl=self._tls
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers=_HEADERS, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        return self._session

    async def get(self, url: str, timeout: float) -> bytes:
        session = self._session or self._open()
        limit = self.max_bytes
        try:
            async with session.get(url, timeout=self._aiohttp.ClientTimeout(total=timeout)) as resp:
                _check_declared(resp.content_length, limit)
                chunks: list[bytes] = []
                read = 0
                async for chunk in resp.content.iter_chunked(CHUNK):
                    read += len(chunk)
                    if read > limit:
                        raise PageTooLarge(limit, read)
                    chunks.append(chunk)
                if resp.status != 200:
                    raise FetchError(f"HTTP {resp.status}")
                return b"".join(chunks)
        except self._aiohttp.ClientSSLError as e:
            cause = _tls_cause(e)
            if cause is None:
                raise
            raise _tls_error(url, cause) from e

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxFetcher:
    def __init__(self, max_bytes: int = DEFAULT_MAX_PAGE_BYTES, insecure_skip_verify: bool = True) -> None:
        import httpx

        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive (got {max_bytes})")
        self.max_bytes = max_bytes
        self._httpx = httpx
        self._client = httpx.AsyncClient(
            headers=_HEADERS,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            timeout=10.0,
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not sit between us and pods
            verify=client_tls(insecure_skip_verify),
        )

    async def get(self, url: str, timeout: float) -> bytes:
        limit = self.max_bytes
        try:
            async with self._client.stream("GET", url, timeout=timeout) as resp:
                declared = resp.headers.get("content-length")
                _check_declared(int(declared) if declared and declared.isdigit() else None, limit)
                chunks: list[bytes] = []
                read = 0
                # Decoded bytes: should a server gzip anyway, the cap bounds what it inflates to.
                async for chunk in resp.aiter_bytes():
                    read += len(chunk)
                    if read > limit:
                        raise PageTooLarge(limit, read)
                    chunks.append(chunk)
                if resp.status_code != 200:
                    raise FetchError(f"HTTP {resp.status_code}")
                return b"".join(chunks)
        except self._httpx.ConnectError as e:
            cause = _tls_cause(e)
            if cause is None:
                raise
            raise _tls_error(url, cause) from e

    async def aclose(self) -> None:
        await self._client.aclose()


BACKENDS: dict[str, type[AiohttpFetcher] | type[HttpxFetcher]] = {"aiohttp": AiohttpFetcher, "httpx": HttpxFetcher}
DEFAULT_BACKEND = "aiohttp"


def make_fetcher(
    backend: str = DEFAULT_BACKEND, *, max_bytes: int = DEFAULT_MAX_PAGE_BYTES, insecure_skip_verify: bool = True
) -> Fetcher:
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown HTTP backend {backend!r} (choose from {sorted(BACKENDS)})") from None
    return cls(max_bytes=max_bytes, insecure_skip_verify=insecure_skip_verify)

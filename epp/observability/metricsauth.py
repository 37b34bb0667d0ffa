"""/metrics behind a Kubernetes bearer token, as the reference's `--metrics-endpoint-auth` does.

The reference (controller-runtime's WithAuthenticationAndAuthorization filter) checks the
`Authorization: Bearer` token with a TokenReview, then asks a SubjectAccessReview whether that
user may `get` the non-resource URL `/metrics`: no or bad token -> 401, not allowed -> 403, the
API server failing -> 500. Prometheus' service account needs a ClusterRole with
`nonResourceURLs: ["/metrics"], verbs: ["get"]`; the EPP's needs `create` on
`tokenreviews.authentication.k8s.io` and `subjectaccessreviews.authorization.k8s.io`.

Answers are cached with the reference's lifetimes (token 1 min; access allowed 5 min, denied
30 s), per token hash and in a bounded LRU, and concurrent scrapes with one token share one
review: a scrape storm costs the API server one pair of reviews per token per minute. Reviews
run on two worker threads (the kubernetes client blocks), so a flood of fresh bad tokens is
queued, not fanned out. /healthz and /readyz stay open: kubelet probes carry no token (the
reference has no HTTP probes at all; its probes are gRPC on the health port).

Enforced when the EPP uses the Kubernetes API (--pool-name / --endpoint-selector) unless
--metrics-endpoint-auth=false. Static mode has no API to review tokens with, so it serves
/metrics openly and says so at start-up, unless --metrics-endpoint-auth=true names a cluster
(--kube-api-server / --kubeconfig / in a pod).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from epp.observability.logs import RateLimitedLog
from epp.options import Options

log = logging.getLogger("epp.metrics")
_api_errors = RateLimitedLog(log, interval=30.0)

TOKEN_TTL = 60.0
ALLOW_TTL = 300.0
DENY_TTL = 30.0
REVIEW_TIMEOUT = 10.0
CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class User:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


class ReviewError(RuntimeError):
    """The API server could not answer a review (unreachable, or the EPP may not create reviews)."""


def metrics_auth_decision(opts: Options) -> tuple[bool, str | None]:
    """(enforce?, a start-up warning or None)."""
    if opts.metrics_endpoint_auth is False:
        return False, None
    if opts.pool_name or opts.endpoint_selector:
        return True, None
    if opts.metrics_endpoint_auth is True:
        return True, None  # static mode, asked for explicitly: needs a cluster (checked when the client is made)
    return False, (
        "/metrics is served without authentication: static mode has no Kubernetes API to check bearer "
        "tokens with (give --metrics-endpoint-auth=true and --kube-api-server or --kubeconfig to "
        "enforce it, or --metrics-endpoint-auth=false to silence this)"
    )


class _TTLCache:
    def __init__(self, entries: int, clock: Callable[[], float]) -> None:
        self.entries, self.clock = entries, clock
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> tuple[bool, Any]:
        hit = self._data.get(key)
        if hit is None:
            return False, None
        expires, value = hit
        if self.clock() >= expires:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: Any, value: Any, ttl: float) -> None:
        self._data[key] = (self.clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.entries:
            self._data.popitem(last=False)


class KubeReviewer:
    """TokenReview and SubjectAccessReview through the kubernetes client (blocking: run on a thread)."""

    def __init__(self, api, timeout: float = REVIEW_TIMEOUT) -> None:
        from kubernetes import client

        self._authn = client.AuthenticationV1Api(api)
        self._authz = client.AuthorizationV1Api(api)
        self.timeout = timeout

    def _call(self, fn, body: dict, what: str) -> dict:
        from kubernetes.client.rest import ApiException

        try:
            resp = fn(body, _preload_content=False, _request_timeout=self.timeout)
            return orjson.loads(resp.data)
        except ApiException as exc:
            hint = ""
            if exc.status == 403:
                hint = f" (the EPP's service account needs 'create' on {what})"
            raise ReviewError(f"{what}: {exc.status} {exc.reason}{hint}") from None
        except Exception as exc:  # connection refused, timeout, bad JSON
            raise ReviewError(f"{what}: {type(exc).__name__}: {exc}") from None

    def token_review(self, token: str) -> User | None:
        doc = self._call(
            self._authn.create_token_review,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            "tokenreviews.authentication.k8s.io",
        )
        status = doc.get("status") or {}
        if not status.get("authenticated"):
            return None
        u = status.get("user") or {}
        extra = tuple(sorted((k, tuple(v)) for k, v in (u.get("extra") or {}).items()))
        return User(u.get("username", ""), u.get("uid", ""), tuple(u.get("groups") or ()), extra)

    def access_review(self, user: User, verb: str, path: str) -> bool:
        spec: dict[str, Any] = {
            "user": user.username,
            "groups": list(user.groups),
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        doc = self._call(
            self._authz.create_subject_access_review,
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
            "subjectaccessreviews.authorization.k8s.io",
        )
        return bool((doc.get("status") or {}).get("allowed"))


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=headers)


class MetricsAuth:
    """The authorizer the metrics server calls for /metrics: None lets a request through."""

    def __init__(self, reviewer: KubeReviewer, clock: Callable[[], float] = time.monotonic, workers: int = 2) -> None:
        self.reviewer = reviewer
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="metrics-auth")
        self._tokens = _TTLCache(CACHE_ENTRIES, clock)
        self._access = _TTLCache(CACHE_ENTRIES, clock)
        self._inflight: dict[Any, asyncio.Future] = {}

    async def _once(self, key: Any, fn: Callable[[], Any]) -> Any:
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.wrap_future(self._executor.submit(fn))
            self._inflight[key] = fut
            fut.add_done_callback(functools.partial(self._forget, key))
        return await asyncio.shield(fut)

    def _forget(self, key: Any, _fut: asyncio.Future) -> None:
        self._inflight.pop(key, None)

    async def authenticate(self, token: str) -> User | None:
        key = hashlib.sha256(token.encode()).digest()  # raw tokens are not kept in memory
        hit, user = self._tokens.get(key)
        if hit:
            return user
        user = await self._once(("token", key), lambda: self.reviewer.token_review(token))
        self._tokens.put(key, user, TOKEN_TTL)
        return user

    async def authorize(self, user: User, verb: str, path: str) -> bool:
        key = (user, verb, path)
        hit, allowed = self._access.get(key)
        if hit:
            return allowed
        allowed = await self._once(("access", key), lambda: self.reviewer.access_review(user, verb, path))
        self._access.put(key, allowed, ALLOW_TTL if allowed else DENY_TTL)
        return allowed

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _text(401, "Unauthorized", **{"WWW-Authenticate": 'Bearer realm="epp metrics"'})
        try:
            user = await self.authenticate(token)
        except ReviewError as exc:
            _api_errors.log(logging.ERROR, "metrics auth: %s", exc)
            return _text(500, "Authentication failed")
        if user is None:
            return _text(401, "Unauthorized", **{"WWW-Authenticate": 'Bearer realm="epp metrics"'})
        verb = "get" if request.method in ("GET", "HEAD") else request.method.lower()
        try:
            allowed = await self.authorize(user, verb, request.path)
        except ReviewError as exc:
            _api_errors.log(logging.ERROR, "metrics auth: %s", exc)
            return _text(500, f"Authorization for user {user.username} failed")
        if not allowed:
            log.debug("metrics: %s may not %s %s", user.username, verb, request.path)
            return _text(403, f"Authorization denied for user {user.username}")
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def build_metrics_auth(opts: Options) -> MetricsAuth:
    """Raises KubeConfigError when there is no cluster to review tokens with."""
    from epp.datalayer.kube.client import api_client

    return MetricsAuth(KubeReviewer(api_client(opts)))

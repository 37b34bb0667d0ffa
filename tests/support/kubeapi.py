"""A test Kubernetes API server: the genuine REST and watch protocol for the objects the EPP reads.

There is no kube-apiserver on these machines, so tests run the real `kubernetes` client (and
`kubectl`) against this. It implements what those clients rely on:

- discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>`, `/apis/<group>/<version>`;
- list: JSON `<Kind>List` with `metadata.resourceVersion`, `labelSelector`, `fieldSelector`;
- get/create/update (optimistic concurrency: a stale `metadata.resourceVersion` is 409 Conflict)/
  merge-patch/delete, with `Status` bodies for errors;
- watch (`watch=true|1`): a chunked stream of `{"type","object"}` lines; without a
  resourceVersion (or "0") it starts with ADDED for every current object; from resourceVersion N
  it replays the history after N, or, when N is older than the last compaction, sends an
  `ERROR` event with a 410 `Expired` Status like the real watch cache; `allowWatchBookmarks`
  gets periodic BOOKMARK events; `timeoutSeconds` ends the stream cleanly.

Metrics endpoint auth: POSTs to `tokenreviews` and `subjectaccessreviews` are answered from
`tokens` (bearer token -> user) and `grants` ((user or "group:<name>", verb, non-resource path)),
as a real API server answers them from its authenticators and RBAC.

Test controls: `stop()`/`start()` simulate an outage on the same port (open watches are cut),
`compact()` forgets history so old resourceVersions become 410, `stall_watches()` makes every
open watch go silent without closing (a dead connection the client must detect).
Objects live in one store with one resourceVersion counter, mutated only on the server's own
event loop thread; test code calls the thread-safe wrappers.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from epp.stack.processes import free_port

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str  # "" = core
    version: str
    plural: str
    kind: str
    short_names: tuple[str, ...] = ()
    namespaced: bool = True

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


POOL_V1 = Resource("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool", ("infpool",))
POOL_V1ALPHA2 = Resource("inference.networking.x-k8s.io", "v1alpha2", "inferencepools", "InferencePool")
OBJECTIVES = Resource("inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives", "InferenceObjective")
REWRITES = Resource("inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite")
PODS = Resource("", "v1", "pods", "Pod", ("po",))
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
ALL_RESOURCES = (PODS, POOL_V1, POOL_V1ALPHA2, OBJECTIVES, REWRITES, LEASES)
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dig(obj: Obj, dotted: str) -> str:
    cur: Any = obj
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def label_matcher(selector: str):
    """Equality- and set-based selector (`a=b,c!=d,e,!f,g in (x,y),h notin (z)`) -> predicate on labels."""
    reqs = []
    parts, depth, cur = [], 0, ""
    for ch in selector:  # split on commas outside parentheses
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for raw in (p.strip() for p in parts):
        if not raw:
            continue
        if " notin " in raw or " in " in raw:
            neg = " notin " in raw
            key, _, values = raw.partition(" notin " if neg else " in ")
            vals = {v.strip() for v in values.strip().strip("()").split(",")}
            reqs.append(lambda lab, k=key.strip(), vs=vals, n=neg: (lab.get(k) in vs) != n)
        elif "!=" in raw:
            k, v = raw.split("!=", 1)
            reqs.append(lambda lab, k=k.strip(), v=v.strip(): lab.get(k) != v)
        elif "=" in raw:
            k, v = raw.replace("==", "=").split("=", 1)
            reqs.append(lambda lab, k=k.strip(), v=v.strip(): lab.get(k) == v)
        elif raw.startswith("!"):
            reqs.append(lambda lab, k=raw[1:].strip(): k not in lab)
        else:
            reqs.append(lambda lab, k=raw: k in lab)
    return lambda labels: all(r(labels) for r in reqs)


def field_matcher(selector: str):
    reqs = []
    for raw in (p.strip() for p in selector.split(",")):
        if not raw:
            continue
        neg = "!=" in raw
        k, v = raw.replace("==", "=").split("!=" if neg else "=", 1)
        reqs.append((k.strip(), v.strip(), neg))
    return lambda obj: all((_dig(obj, k) == v) != neg for k, v, neg in reqs)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass
class _Watcher:
    resource: Resource
    namespace: str | None
    labels: Any
    fields: Any
    queue: asyncio.Queue
    transport: Any = None
    stalled: bool = False

    def wants(self, obj: Obj) -> bool:
        md = obj.get("metadata", {})
        if self.namespace is not None and md.get("namespace") != self.namespace:
            return False
        return self.labels(md.get("labels") or {}) and self.fields(obj)


@dataclass
class _Event:
    rv: int
    type: str
    resource: Resource
    obj: Obj


@dataclass
class KubeApiServer:
    """Run with `start()` (own thread and event loop); `url` for clients; `stop()`/`start()` for outages."""

    port: int = 0
    bookmark_interval: float = 1.0
    resources: tuple[Resource, ...] = ALL_RESOURCES
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query) seen, for assertions
    tokens: dict[str, Obj] = field(default_factory=dict)  # bearer token -> {"username", "uid", "groups"}
    grants: set[tuple[str, str, str]] = field(default_factory=set)  # (user | "group:<g>", verb, non-resource path)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._objects: dict[Resource, dict[tuple[str, str], Obj]] = {r: {} for r in self.resources}
        self._history: list[_Event] = []
        self._rv = 100
        self._compacted = 0
        self._watchers: list[_Watcher] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubeapi", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- lifecycle (thread-safe) ---------------------------------------------------------------

    def _call(self, fn, *args):
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _await(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> KubeApiServer:
        self._await(self._start())
        return self

    def stop(self) -> None:
        """Outage: stop listening and cut every open watch; the store survives for `start()`."""
        self._await(self._stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    async def _start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        for w in list(self._watchers):
            if w.transport is not None:
                w.transport.close()
            w.queue.put_nowait(None)
        await runner.cleanup()

    # ---- test controls (thread-safe) ------------------------------------------------------------

    def create(self, resource: Resource, obj: Obj) -> Obj:
        return self._call(self._create, resource, copy.deepcopy(obj))

    def update(self, resource: Resource, obj: Obj) -> Obj:
        """Replace the object (ignores resourceVersion: tests are not racing anyone)."""
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {}).pop("resourceVersion", None)
        return self._call(self._update, resource, obj)

    def patch(self, resource: Resource, namespace: str, name: str, patch: Obj) -> Obj:
        return self._call(self._patch, resource, namespace, name, patch)

    def delete(self, resource: Resource, namespace: str, name: str) -> Obj:
        return self._call(self._delete, resource, namespace, name)

    def get(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        found = self._call(lambda: self._objects[resource].get((namespace, name)))
        return copy.deepcopy(found)

    def list(self, resource: Resource, namespace: str | None = None) -> list[Obj]:
        return self._call(
            lambda: [
                copy.deepcopy(o)
                for (ns, _), o in self._objects[resource].items()
                if namespace is None or ns == namespace
            ]
        )

    def compact(self) -> int:
        """Forget history up to now: a watch from any older resourceVersion gets 410 Gone."""

        def run():
            self._compacted = self._rv
            self._history.clear()
            return self._rv

        return self._call(run)

    def stall_watches(self) -> int:
        """Every open watch stops delivering (events and bookmarks) but stays connected."""

        def run():
            for w in self._watchers:
                w.stalled = True
            return len(self._watchers)

        return self._call(run)

    def watch_count(self, resource: Resource | None = None) -> int:
        return self._call(lambda: sum(1 for w in self._watchers if resource is None or w.resource == resource))

    # ---- store (server loop only) ---------------------------------------------------------------

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _record(self, resource: Resource, typ: str, obj: Obj) -> None:
        self._history.append(_Event(self._rv, typ, resource, copy.deepcopy(obj)))
        for w in self._watchers:
            if w.resource == resource and w.wants(obj):
                w.queue.put_nowait((typ, obj))

    def _key(self, resource: Resource, obj: Obj) -> tuple[str, str]:
        md = obj.setdefault("metadata", {})
        if resource.namespaced:
            md.setdefault("namespace", "default")
        return md.get("namespace", ""), md["name"]

    def _create(self, resource: Resource, obj: Obj) -> Obj:
        key = self._key(resource, obj)
        if key in self._objects[resource]:
            raise _ApiError(409, "AlreadyExists", f'{resource.plural} "{key[1]}" already exists')
        obj["apiVersion"], obj["kind"] = resource.group_version, resource.kind
        md = obj["metadata"]
        md.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=md.get("creationTimestamp") or _now(),
            resourceVersion=self._bump(),
            generation=1,
        )
        self._objects[resource][key] = obj
        self._record(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    def _update(self, resource: Resource, obj: Obj) -> Obj:
        key = self._key(resource, obj)
        old = self._objects[resource].get(key)
        if old is None:
            raise _ApiError(404, "NotFound", f'{resource.plural} "{key[1]}" not found')
        sent_rv = obj["metadata"].get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise _ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.plural} "{key[1]}": '
                "the object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        obj["apiVersion"], obj["kind"] = resource.group_version, resource.kind
        md = obj["metadata"]
        for k in ("uid", "creationTimestamp"):
            md[k] = old["metadata"][k]
        md["generation"] = old["metadata"]["generation"] + (obj.get("spec") != old.get("spec"))
        md["resourceVersion"] = self._bump()
        self._objects[resource][key] = obj
        self._record(resource, "MODIFIED", obj)
        return copy.deepcopy(obj)

    def _patch(self, resource: Resource, namespace: str, name: str, patch: Obj) -> Obj:
        old = self._objects[resource].get((namespace, name))
        if old is None:
            raise _ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        new = merge_patch(old, patch)
        new["metadata"].pop("resourceVersion", None)
        return self._update(resource, new)

    def _delete(self, resource: Resource, namespace: str, name: str) -> Obj:
        obj = self._objects[resource].pop((namespace, name), None)
        if obj is None:
            raise _ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        obj["metadata"]["resourceVersion"] = self._bump()
        self._record(resource, "DELETED", obj)
        return copy.deepcopy(obj)

    # ---- HTTP -----------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        try:
            return await self._route(request)
        except _ApiError as err:
            return _json(status(err.code, err.reason, err.message), err.code)

    async def _route(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.rstrip("/") in (TOKEN_REVIEWS, ACCESS_REVIEWS):
            return await self._review(request)
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and parts in (["version"], ["version", ""]):
            return _json({"major": "1", "minor": "32", "gitVersion": "v1.32.0-epp-test", "platform": "linux/amd64"})
        if request.method == "GET" and parts == ["api"]:
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                    ],
                }
            )
        if request.method == "GET" and parts == ["apis"]:
            return _json(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group_doc(g) for g in self._groups() if g],
                }
            )
        if parts[:1] == ["api"]:
            gv, rest = ("", parts[1]), parts[2:] if len(parts) > 1 else []
            if len(parts) < 2:
                raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            if len(parts) == 2:
                if parts[1] not in self._groups():
                    raise _ApiError(404, "NotFound", "the server could not find the requested resource")
                return _json(self._group_doc(parts[1]) | {"kind": "APIGroup", "apiVersion": "v1"})
            gv, rest = (parts[1], parts[2]), parts[3:]
        else:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        served = [r for r in self.resources if (r.group, r.version) == gv]
        if not served:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return _json(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": served[0].group_version,
                    "resources": [
                        {
                            "name": r.plural,
                            "singularName": r.singular,
                            "namespaced": r.namespaced,
                            "kind": r.kind,
                            "verbs": VERBS,
                            "shortNames": list(r.short_names),
                        }
                        for r in served
                    ],
                }
            )
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        by_plural = {r.plural: r for r in served}
        resource = by_plural.get(rest[0])
        if resource is None or len(rest) > 2:
            raise _ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) == 2 else None
        return await self._serve(request, resource, namespace, name)

    async def _review(self, request: web.Request) -> web.Response:
        """TokenReview / SubjectAccessReview: the request object echoed with its `status` filled in."""
        body = await _body(request)
        spec = body.get("spec") or {}
        if request.path.rstrip("/") == TOKEN_REVIEWS:
            user = self.tokens.get(spec.get("token", ""))
            result: Obj = (
                {"authenticated": True, "user": user, "audiences": spec.get("audiences") or []}
                if user is not None
                else {"authenticated": False, "error": "invalid bearer token"}
            )
            kind, api_version = "TokenReview", "authentication.k8s.io/v1"
        else:
            attrs = spec.get("nonResourceAttributes") or {}
            who = [spec.get("user", "")] + [f"group:{g}" for g in spec.get("groups") or []]
            allowed = any((w, attrs.get("verb"), attrs.get("path")) in self.grants for w in who)
            result = {"allowed": allowed} | ({} if allowed else {"reason": "no RBAC rule allows it"})
            kind, api_version = "SubjectAccessReview", "authorization.k8s.io/v1"
        return _json(
            {
                "kind": kind,
                "apiVersion": api_version,
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": result,
            },
            201,
        )

    def reviews(self, kind: str) -> int:
        """How many TokenReviews ("token") or SubjectAccessReviews ("access") were posted."""
        path = TOKEN_REVIEWS if kind == "token" else ACCESS_REVIEWS
        return sum(1 for m, p in self.requests if m == "POST" and p.split("?")[0].rstrip("/") == path)

    def _groups(self) -> list[str]:
        seen: list[str] = []
        for r in self.resources:
            if r.group not in seen:
                seen.append(r.group)
        return seen

    def _group_doc(self, group: str) -> Obj:
        versions = []
        for r in self.resources:
            if r.group == group and r.version not in [v["version"] for v in versions]:
                versions.append({"groupVersion": r.group_version, "version": r.version})
        return {"name": group, "versions": versions, "preferredVersion": versions[0]}

    async def _serve(
        self, request: web.Request, resource: Resource, namespace: str | None, name: str | None
    ) -> web.StreamResponse:
        q = request.query
        method = request.method
        if method == "GET" and name is None:
            labels = label_matcher(q.get("labelSelector", ""))
            fields = field_matcher(q.get("fieldSelector", ""))
            if q.get("watch", "").lower() in ("true", "1"):
                return await self._watch(request, _Watcher(resource, namespace, labels, fields, asyncio.Queue()))
            items = [
                o
                for (ns, _), o in self._objects[resource].items()
                if (namespace is None or ns == namespace) and labels(o["metadata"].get("labels") or {}) and fields(o)
            ]
            return _json(
                {
                    "kind": f"{resource.kind}List",
                    "apiVersion": resource.group_version,
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])),
                }
            )
        if method == "GET":
            obj = self._objects[resource].get((namespace or "", name))
            if obj is None:
                raise _ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
            return _json(obj)
        if method == "POST" and name is None:
            body = await _body(request)
            if namespace is not None:
                body.setdefault("metadata", {})["namespace"] = namespace
            return _json(self._create(resource, body), 201)
        if method == "PUT" and name is not None:
            body = await _body(request)
            body.setdefault("metadata", {}).update(name=name, namespace=namespace or "")
            return _json(self._update(resource, body))
        if method == "PATCH" and name is not None:
            return _json(self._patch(resource, namespace or "", name, await _body(request)))
        if method == "DELETE" and name is not None:
            return _json(self._delete(resource, namespace or "", name))
        raise _ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _watch(self, request: web.Request, w: _Watcher) -> web.StreamResponse:
        q = request.query
        rv_text = q.get("resourceVersion", "")
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        w.transport = request.transport
        # Replay is computed and the watcher registered without an await in between, so no event is lost.
        if rv_text in ("", "0"):
            backlog = [
                ("ADDED", o)
                for o in sorted(self._objects[w.resource].values(), key=lambda o: int(o["metadata"]["resourceVersion"]))
                if (w.namespace is None or o["metadata"].get("namespace") == w.namespace) and w.wants(o)
            ]
        elif int(rv_text) < self._compacted:
            await _send(
                resp, "ERROR", status(410, "Expired", f"too old resource version: {rv_text} ({self._compacted})")
            )
            return resp
        else:
            backlog = [
                (e.type, e.obj)
                for e in self._history
                if e.rv > int(rv_text) and e.resource == w.resource and w.wants(e.obj)
            ]
        self._watchers.append(w)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        cut = False
        try:
            for typ, obj in backlog:
                await _send(resp, typ, obj)
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                try:
                    item = await asyncio.wait_for(w.queue.get(), max(wait, 0.001))
                except TimeoutError:
                    if bookmarks and loop.time() >= next_bookmark and not w.stalled:
                        next_bookmark = loop.time() + self.bookmark_interval
                        await _send(
                            resp,
                            "BOOKMARK",
                            {
                                "kind": w.resource.kind,
                                "apiVersion": w.resource.group_version,
                                "metadata": {"resourceVersion": str(self._rv)},
                            },
                        )
                    continue
                if item is None:
                    cut = True
                    break
                if not w.stalled:
                    await _send(resp, item[0], item[1])
            while w.stalled and not cut:  # a stalled watch never ends by itself, only with an outage
                cut = await w.queue.get() is None
            if not cut:
                await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(w)
        return resp


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _json(obj: Obj, code: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=code, content_type="application/json")


async def _body(request: web.Request) -> Obj:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _ApiError(400, "BadRequest", f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "BadRequest", "body must be a JSON object")
    return body


async def _send(resp: web.StreamResponse, typ: str, obj: Obj) -> None:
    await resp.write(orjson.dumps({"type": typ, "object": obj}) + b"\n")

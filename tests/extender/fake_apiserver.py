"""A small stand-in for kube-apiserver's list and watch of Nodes, Pods and the DRA kinds, over real HTTP.

No kube-apiserver can be installed here, so the watch code is exercised against this: the same URLs, query
parameters and wire format the kubernetes client uses (paged LIST with `limit`/`continue`, WATCH as a chunked stream
of newline-delimited `{"type", "object"}` events, BOOKMARKs, `410 Gone` for a resourceVersion that fell out of the
window). Objects are changed through `put`/`delete`, which notify every open watch, or by clients: ResourceClaimTemplates
are created (POST, 409 AlreadyExists) and deleted (DELETE, 404 NotFound) like the real server does, and Leases
(coordination.k8s.io/v1) are read, created and replaced (409 Conflict on a stale resourceVersion), for leader
election. Used by the tests and by
bench/extender_bench.py (where it also supplies the churn of pods being bound and deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

JsonDict = dict[str, Any]
PATHS = {"nodes": "Node", "pods": "Pod", "namespaces": "Namespace", "resourceslices": "ResourceSlice",
         "resourceclaims": "ResourceClaim", "resourceclaimtemplates": "ResourceClaimTemplate"}
GROUPS = {"ResourceSlice": "resource.k8s.io/v1", "ResourceClaim": "resource.k8s.io/v1",
          "ResourceClaimTemplate": "resource.k8s.io/v1"}


@dataclass
class _Kind:
    objects: dict[str, JsonDict] = field(default_factory=dict)
    history: list[tuple[int, str, JsonDict]] = field(default_factory=list)
    watchers: list[asyncio.Queue[tuple[int, str, JsonDict] | None]] = field(default_factory=list)


class FakeApiServer:
    """Serve with `start()` (in a thread with its own loop) or `app()` (in the caller's loop)."""

    def __init__(self, *, history: int = 100_000) -> None:
        self.version = 1000
        self.kinds = {kind: _Kind() for kind in PATHS.values()}
        self.lists = 0
        self.watches = 0
        self.writes: list[tuple[str, str]] = []
        """(verb, namespace/name) of every template create and delete clients made."""
        self.leases: dict[str, JsonDict] = {}
        self._history = history
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread()
        self.port = 0

    # ------------------------------------------------------------------------------------------- changing objects

    def put(self, obj: JsonDict) -> None:
        """Create or replace an object (thread-safe once started); watchers get ADDED or MODIFIED."""
        self._call(self._put, obj)

    def delete(self, kind: str, key: str) -> None:
        self._call(self._delete, kind, key)

    def expire_history(self) -> None:
        """Forget all past events, so resuming any earlier watch gets 410 Gone."""
        self._call(self._expire)

    def _call(self, func: Any, *args: Any) -> None:
        if self._loop is None or self._loop_is_current():
            func(*args)
        else:
            asyncio.run_coroutine_threadsafe(_as_coroutine(func, *args), self._loop).result(10)

    def _loop_is_current(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _put(self, obj: JsonDict) -> None:
        kind = self.kinds[obj["kind"]]
        key = _key(obj)
        self.version += 1
        stored = json.loads(json.dumps(obj))
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        event = "MODIFIED" if key in kind.objects else "ADDED"
        kind.objects[key] = stored
        self._notify(kind, event, stored)

    def _delete(self, kind_name: str, key: str) -> None:
        kind = self.kinds[kind_name]
        obj = kind.objects.pop(key, None)
        if obj is not None:
            self.version += 1
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.version)}}
            self._notify(kind, "DELETED", obj)

    def _expire(self) -> None:
        for kind in self.kinds.values():
            kind.history.clear()
        self.version += 1

    def _notify(self, kind: _Kind, event: str, obj: JsonDict) -> None:
        entry = (self.version, event, obj)
        kind.history.append(entry)
        del kind.history[: -self._history]
        for queue in kind.watchers:
            queue.put_nowait(entry)

    # ------------------------------------------------------------------------------------------------- serving

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/{plural}", self._handle)
        app.router.add_get("/apis/resource.k8s.io/v1/{plural}", self._handle)
        templates = "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaimtemplates"
        app.router.add_post(templates, self._create)
        app.router.add_delete(templates + "/{name}", self._remove)
        leases = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        app.router.add_get(leases + "/{name}", self._lease_get)
        app.router.add_post(leases, self._lease_create)
        app.router.add_put(leases + "/{name}", self._lease_replace)
        return app

    def start(self) -> str:
        """Serve on 127.0.0.1 in a background thread; returns the base URL."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="fake-apiserver")
        self._thread.start()
        ready.wait(10)
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=0.1)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self._runner = runner
        self.port = runner.addresses[0][1]
        ready.set()
        loop.run_forever()

    @contextlib.asynccontextmanager
    async def serving_here(self) -> AsyncIterator[str]:
        """Serve in the caller's event loop (no thread): `put`/`delete` then act at once. Yields the base URL."""
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        try:
            yield self.url
        finally:
            for kind in self.kinds.values():
                for queue in kind.watchers:
                    queue.put_nowait(None)
            await runner.cleanup()

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        for kind in self.kinds.values():
            for queue in kind.watchers:
                loop.call_soon_threadsafe(queue.put_nowait, None)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "users": [{"name": "fake", "user": {"token": "not-checked"}}],
        }
        path.write_text(json.dumps(config))
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind_name = PATHS.get(request.match_info["plural"])
        if kind_name is None:
            raise web.HTTPNotFound()
        kind = self.kinds[kind_name]
        selector = request.query.get("fieldSelector", "")
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, kind_name, kind, selector)
        return self._list(request, kind_name, kind, selector)

    def _list(self, request: web.Request, kind_name: str, kind: _Kind, selector: str) -> web.Response:
        self.lists += 1
        items = [o for o in kind.objects.values() if _selected(o, selector)]
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0) or len(items) or 1
        page = items[start:start + limit]
        metadata: JsonDict = {"resourceVersion": str(self.version)}
        if start + limit < len(items):
            metadata["continue"] = str(start + limit)
        body = {"kind": f"{kind_name}List", "apiVersion": GROUPS.get(kind_name, "v1"), "metadata": metadata,
                "items": page}
        return web.json_response(body)

    async def _watch(self, request: web.Request, kind_name: str, kind: _Kind, selector: str) -> web.StreamResponse:
        self.watches += 1
        since = int(request.query.get("resourceVersion") or self.version)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if kind.history and since < kind.history[0][0] - 1 or not kind.history and since < self.version:
            await _send(response, {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                "message": f"too old resource version: {since} ({self.version})"}})
            return response
        queue: asyncio.Queue[tuple[int, str, JsonDict] | None] = asyncio.Queue()
        for entry in kind.history:
            if entry[0] > since:
                queue.put_nowait(entry)
        kind.watchers.append(queue)
        try:
            await self._stream(response, queue, selector, timeout, kind_name)
        finally:
            kind.watchers.remove(queue)
        return response

    async def _stream(
        self, response: web.StreamResponse, queue: asyncio.Queue[tuple[int, str, JsonDict] | None], selector: str,
        timeout: float, kind_name: str,
    ) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        with contextlib.suppress(ConnectionResetError, asyncio.TimeoutError):
            while True:
                left = deadline - asyncio.get_running_loop().time()
                entry = await asyncio.wait_for(queue.get(), max(left, 0.001))
                if entry is None:
                    return
                _, event, obj = entry
                if _selected(obj, selector):
                    await _send(response, {"type": event, "object": obj})
                elif event == "BOOKMARK":
                    await _send(response, {"type": "BOOKMARK", "object": {
                        "kind": kind_name, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)}}})

    # ------------------------------------------------------------------------------------------ client writes

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        body.setdefault("metadata", {})["namespace"] = request.match_info["namespace"]
        key = _key(body)
        self.writes.append(("create", key))
        if key in self.kinds["ResourceClaimTemplate"].objects:
            return _status(409, "AlreadyExists", f"resourceclaimtemplates {key!r} already exists")
        self._put({**body, "kind": "ResourceClaimTemplate", "apiVersion": "resource.k8s.io/v1"})
        return web.json_response(self.kinds["ResourceClaimTemplate"].objects[key], status=201)

    async def _remove(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        self.writes.append(("delete", key))
        obj = self.kinds["ResourceClaimTemplate"].objects.get(key)
        if obj is None:
            return _status(404, "NotFound", f"resourceclaimtemplates {key!r} not found")
        self._delete("ResourceClaimTemplate", key)
        return web.json_response(obj)

    async def _lease_get(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        if key not in self.leases:
            return _status(404, "NotFound", f"leases {key!r} not found")
        return web.json_response(self.leases[key])

    async def _lease_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = f"{request.match_info['namespace']}/{body['metadata']['name']}"
        if key in self.leases:
            return _status(409, "AlreadyExists", f"leases {key!r} already exists")
        return self._store_lease(key, body, 201)

    async def _lease_replace(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        current = self.leases.get(key)
        if current is None:
            return _status(404, "NotFound", f"leases {key!r} not found")
        if (body.get("metadata") or {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", "the object has been modified; please apply your changes to the latest "
                                            "version and try again")
        return self._store_lease(key, body, 200)

    def _store_lease(self, key: str, body: JsonDict, status: int) -> web.Response:
        self.version += 1
        namespace, name = key.split("/")
        stored = {**body, "kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                  "metadata": {**(body.get("metadata") or {}), "name": name, "namespace": namespace,
                               "resourceVersion": str(self.version)}}
        self.leases[key] = stored
        return web.json_response(stored, status=status)

    def objects(self, kind: str) -> Iterator[JsonDict]:
        return iter(list(self.kinds[kind].objects.values()))


async def _cancel_the_rest() -> None:
    """End the watch streams whose clients went away (aiohttp does not cancel their handlers), so none is left
    pending when the loop closes."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _as_coroutine(func: Any, *args: Any) -> None:
    func(*args)


async def _send(response: web.StreamResponse, event: JsonDict) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def _key(obj: JsonDict) -> str:
    metadata = obj.get("metadata") or {}
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata['name']}" if namespace else str(metadata["name"])


def _selected(obj: JsonDict, selector: str) -> bool:
    """The one field selector the extender uses: `spec.nodeName!=` (bound pods)."""
    if selector == "spec.nodeName!=":
        return bool((obj.get("spec") or {}).get("nodeName"))
    return True

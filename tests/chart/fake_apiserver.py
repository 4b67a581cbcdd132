"""The few kube-apiserver endpoints `gpuguard certs` uses, emulated with the wire JSON the real one sends.

Served by aiohttp on 127.0.0.1 in a thread of its own, so the real (blocking) kubernetes client can be pointed at it
through an ordinary kubeconfig. What it emulates, and nothing more:

- Secrets: GET, POST (409 AlreadyExists when present), PUT (409 Conflict when metadata.resourceVersion is stale);
- Mutating/ValidatingWebhookConfigurations: GET, PATCH with `application/json-patch+json` (a failed `test`
  operation is 422, as kube-apiserver answers);
- 404 NotFound as a metav1.Status for anything absent; every write bumps resourceVersion.

Tests seed objects, inspect them afterwards, read the request log, and can inject one-off failures (a concurrent
writer's conflict, a 403 from RBAC) with `fail_next`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import yaml
from aiohttp import web

Obj = dict[str, Any]
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
RESOURCES = {
    "mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
    "validatingwebhookconfigurations": "ValidatingWebhookConfiguration",
}


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class FakeApiServer:
    objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    """(resource, namespace or "", name) -> object, as stored."""
    requests: list[Request] = field(default_factory=list)
    failures: list[tuple[str, str, int, Obj | None]] = field(default_factory=list)
    url: str = ""
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1000))

    def put(self, obj: Obj) -> None:
        """Seed an object (a Secret, or a webhook configuration as the chart renders it)."""
        obj = copy.deepcopy(obj)
        kind = obj["kind"]
        resource = "secrets" if kind == "Secret" else next(r for r, k in RESOURCES.items() if k == kind)
        namespace = obj["metadata"].get("namespace", "") if kind == "Secret" else ""
        self._store(resource, namespace, obj)

    def get(self, resource: str, name: str, namespace: str = "") -> Obj | None:
        return self.objects.get((resource, namespace, name))

    def fail_next(self, method: str, resource: str, status: int, *, concurrent_write: Obj | None = None) -> None:
        """The next `method` on `resource` answers `status` (once), as if RBAC or another writer intervened; with
        `concurrent_write`, that other writer's object is stored at that moment (a lost race)."""
        self.failures.append((method, resource, status, concurrent_write))

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def _store(self, resource: str, namespace: str, obj: Obj) -> Obj:
        metadata = obj.setdefault("metadata", {})
        metadata["resourceVersion"] = str(next(self._versions))
        metadata.setdefault("uid", f"uid-{metadata['name']}")
        metadata.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
        self.objects[(resource, namespace, metadata["name"])] = obj
        return obj

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/{namespace}/secrets", self._secrets)
        app.router.add_route("*", "/api/v1/namespaces/{namespace}/secrets/{name}", self._secrets)
        app.router.add_route("*", ADMISSION + "/{resource}/{name}", self._configurations)
        return app

    async def _record(self, request: web.Request) -> Any:
        text = await request.text()
        body = json.loads(text) if text else None
        self.requests.append(Request(request.method, request.path, request.content_type, body))
        return body

    def _injected(self, method: str, resource: str) -> web.Response | None:
        for index, (m, r, status, concurrent_write) in enumerate(self.failures):
            if (m, r) == (method, resource):
                del self.failures[index]
                if concurrent_write is not None:
                    self.put(concurrent_write)
                reasons = {409: "Conflict", 403: "Forbidden", 500: "InternalError", 422: "Invalid"}
                return status_response(status, reasons.get(status, "Unknown"), f"injected {status}", resource, "")
        return None

    async def _secrets(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        namespace, name = request.match_info["namespace"], request.match_info.get("name", "")
        injected = self._injected(request.method, "secrets")
        if injected is not None:
            return injected
        if request.method == "POST":
            return self._create_secret(namespace, body)
        current = self.get("secrets", name, namespace)
        if current is None:
            return status_response(404, "NotFound", f'secrets "{name}" not found', "secrets", name)
        if request.method == "GET":
            return web.json_response(current)
        if request.method == "PUT":
            return self._replace_secret(namespace, name, current, body)
        return status_response(405, "MethodNotAllowed", "method not allowed", "secrets", name)

    def _create_secret(self, namespace: str, body: Obj) -> web.Response:
        name = body["metadata"]["name"]
        if self.get("secrets", name, namespace) is not None:
            return status_response(409, "AlreadyExists", f'secrets "{name}" already exists', "secrets", name)
        body["metadata"]["namespace"] = namespace
        return web.json_response(self._store("secrets", namespace, body), status=201)

    def _replace_secret(self, namespace: str, name: str, current: Obj, body: Obj) -> web.Response:
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            message = (f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
                       "please apply your changes to the latest version and try again")
            return status_response(409, "Conflict", message, "secrets", name)
        return web.json_response(self._store("secrets", namespace, body))

    async def _configurations(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        resource, name = request.match_info["resource"], request.match_info["name"]
        injected = self._injected(request.method, resource)
        if injected is not None:
            return injected
        current = self.get(resource, name)
        if current is None:
            return status_response(404, "NotFound", f'{resource}.admissionregistration.k8s.io "{name}" not found',
                                   resource, name, group="admissionregistration.k8s.io")
        if request.method == "GET":
            return web.json_response(current)
        if request.method != "PATCH" or request.content_type != "application/json-patch+json":
            return status_response(415, "UnsupportedMediaType", f"unsupported {request.content_type}", resource, name)
        try:
            patched = jsonpatch.apply_patch(current, body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            return status_response(422, "Invalid", f"the server rejected our request: {error}", resource, name)
        return web.json_response(self._store(resource, "", patched))


def status_response(code: int, reason: str, message: str, kind: str, name: str, *, group: str = "") -> web.Response:
    """A metav1.Status, as kube-apiserver sends it with every error."""
    details: Obj = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
              "reason": reason, "details": details, "code": code}
    return web.json_response(status, status=code)


@contextmanager
def serving(server: FakeApiServer) -> Iterator[FakeApiServer]:
    """Run `server` on 127.0.0.1 (an ephemeral port) in a background thread until the block ends."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner = web.AppRunner(server.app(), access_log=None)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10), "the fake API server did not start"
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig for the fake server (plain HTTP, a bearer token as a service account would have)."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "certs", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "certs", "namespace": "gpuguard"}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path

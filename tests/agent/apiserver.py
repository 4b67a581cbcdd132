"""A small stand-in for kube-apiserver: the node, pod and ConfigMap endpoints the agent and `gpuguard mig-layouts` use,
over real HTTP.

No API server can be installed here, so the official Kubernetes client is pointed at this one through a kubeconfig.
It keeps objects in memory, applies JSON merge patches (RFC 7386) to nodes, checks `resourceVersion` on ConfigMap
replaces like the real server (409 Conflict), answers errors as metav1.Status, records every request, and can be
told to fail the next requests with a given status. Node and Pod lists honour a `labelSelector` of `key` or `key=value`
terms (comma-separated, all must hold) and ignore field selectors.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

JsonDict = dict[str, Any]

NODE = re.compile(r"^/api/v1/nodes/([^/?]+)$")
LISTS = {"/api/v1/nodes": "nodes", "/api/v1/pods": "pods"}
CONFIG_MAPS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/?]+))?$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    content_type: str
    authorization: str
    body: Any


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    def __init__(self, objects: list[JsonDict], *, port: int = 0) -> None:
        """`port`: 0 for any free one; a fixed one to come back on the same address after a simulated outage."""
        self.nodes = {o["metadata"]["name"]: copy.deepcopy(o) for o in objects if o["kind"] == "Node"}
        self.pods = [copy.deepcopy(o) for o in objects if o["kind"] == "Pod"]
        self.config_maps = {
            (o["metadata"].get("namespace", "default"), o["metadata"]["name"]): copy.deepcopy(o)
            for o in objects if o["kind"] == "ConfigMap"
        }
        self.requests: list[Request] = []
        self.fail_next: list[int] = []
        self._version = 100
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, *, token: str = "test-token") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def handle(self, method: str, path: str, body: Any, query: str = "") -> tuple[int, JsonDict]:
        with self._lock:
            if self.fail_next:
                status = self.fail_next.pop(0)
                return status, _status(status, "injected failure")
            if path in LISTS and method == "GET":
                return 200, self._list(LISTS[path], query)
            if match := NODE.match(path):
                return self._node(method, match.group(1), body)
            if match := CONFIG_MAPS.match(path):
                return self._config_map(method, match.group(1), match.group(2), body)
            return 404, _status(404, f"no route {method} {path}")

    def _node(self, method: str, name: str, body: Any) -> tuple[int, JsonDict]:
        node = self.nodes.get(name)
        if node is None:
            return 404, _status(404, f'nodes "{name}" not found')
        if method == "PATCH":
            node = merge_patch(node, body)
            node["metadata"]["resourceVersion"] = self._next_version()
            self.nodes[name] = node
        return 200, node

    def _list(self, kind: str, query: str) -> JsonDict:
        selector = urllib.parse.parse_qs(query).get("labelSelector", [""])[0]
        items = list(self.nodes.values()) if kind == "nodes" else self.pods
        chosen = [copy.deepcopy(o) for o in items if _selected(o, selector)]
        return {"kind": "NodeList" if kind == "nodes" else "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)}, "items": chosen}

    def _config_map(self, method: str, namespace: str, name: str | None, body: Any) -> tuple[int, JsonDict]:
        if method == "POST":
            key = (namespace, body["metadata"]["name"])
            if key in self.config_maps:
                return 409, _status(409, f'configmaps "{key[1]}" already exists')
            return 201, self._store(key, body)
        key = (namespace, name or "")
        current = self.config_maps.get(key)
        if current is None:
            return 404, _status(404, f'configmaps "{name}" not found')
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "the object has been modified; please apply your changes to the latest "
                                         "version and try again")
            return 200, self._store(key, body)
        return 200, current

    def _store(self, key: tuple[str, str], body: JsonDict) -> JsonDict:
        stored = copy.deepcopy(body)
        stored["metadata"]["namespace"] = key[0]
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.config_maps[key] = stored
        return stored

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                path, _, query = self.path.partition("?")
                server.requests.append(Request(self.command, path, self.headers.get("Content-Type", ""),
                                               self.headers.get("Authorization", ""), body))
                status, reply = server.handle(self.command, path, body, query)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = _serve

            def log_message(self, *_: Any) -> None:
                pass

        return Handler


def _selected(obj: JsonDict, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, has_value, value = term.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def _status(code: int, message: str) -> JsonDict:
    reasons = {404: "NotFound", 409: "Conflict", 500: "InternalError", 503: "ServiceUnavailable"}
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reasons.get(code, "Unknown"), "code": code}

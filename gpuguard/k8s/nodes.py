"""Read a node and patch its labels and annotations; read, create and replace a ConfigMap. Nothing more.

This is the node agent's whole view of the cluster, behind the narrow `NodeApi` Protocol, with two implementations:
`KubernetesNodes` (the real API server, through the official client) and `ClusterStateNodes` (the cluster-state
file that stands in for it in the demo, dry runs and tests). Objects travel as plain JSON dicts in the API's own
field names, never as client model classes. Every failure becomes a `NodeApiError` naming the operation, so callers
handle one exception type; `Conflict` (HTTP 409: someone else changed the object first) and `NotFound` are told
apart because callers react to them differently.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpuguard.k8s.client import api_client
from gpuguard.k8s.cluster_state import ClusterObjects, ClusterStateError, ClusterStateFile, JsonDict

REQUEST_TIMEOUT = 10.0
"""Seconds per API call: the agent retries on its next cycle, so a hung call must not stall it for long."""

_MERGE_PATCH = "application/merge-patch+json"


class NodeApiError(RuntimeError):
    """An API call failed; `status` is the HTTP status, or None when the server was not reached."""

    def __init__(self, operation: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{operation}: {message}")
        self.operation = operation
        self.status = status


class NotFound(NodeApiError):
    """HTTP 404: the object does not exist."""


class Conflict(NodeApiError):
    """HTTP 409: the object already exists, or changed since it was read (stale resourceVersion)."""


class NodeApi(Protocol):
    def read_node(self, name: str) -> JsonDict: ...

    def patch_node_metadata(
        self, name: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        """Set labels and annotations; a None value removes the key. Other keys are left alone."""
        ...

    def read_config_map(self, namespace: str, name: str) -> JsonDict | None:
        """The ConfigMap, or None when it does not exist."""
        ...

    def create_config_map(self, config_map: JsonDict) -> None:
        """Raise `Conflict` if it already exists."""
        ...

    def replace_config_map(self, config_map: JsonDict) -> None:
        """Raise `Conflict` if it changed since `metadata.resourceVersion` was read."""
        ...


def metadata_patch(labels: Mapping[str, str | None], annotations: Mapping[str, str | None]) -> JsonDict:
    """A JSON merge patch (RFC 7386) of metadata: null removes a key, absent keys stay as they are."""
    sections = (("labels", labels), ("annotations", annotations))
    return {"metadata": {section: dict(values) for section, values in sections if values}}


class KubernetesNodes:
    """`NodeApi` on the real API server. Needs RBAC get/patch on nodes and get/create/update on the ConfigMap.

    Requests go through the official client's `ApiClient` (kubeconfig or in-cluster configuration, bearer tokens
    and their refresh, TLS, connection pool) but not through the generated `CoreV1Api`: importing that module costs
    about 20 MiB and a second of CPU, a third of the agent's memory budget, for five REST calls.
    """

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    def connect(cls, *, kubeconfig: Path | None = None, in_cluster: bool = False) -> KubernetesNodes:
        return cls(api_client(kubeconfig=kubeconfig, in_cluster=in_cluster))

    def read_node(self, name: str) -> JsonDict:
        return self._request(f"read node {name}", "GET", _NODE, {"name": name})

    def patch_node_metadata(
        self, name: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        self._request(f"patch node {name}", "PATCH", _NODE, {"name": name},
                      body=metadata_patch(labels, annotations), content_type=_MERGE_PATCH)

    def list_nodes(self, *, label_selector: str = "") -> list[JsonDict]:
        """Every Node matching the selector (one unpaged LIST)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        return list(self._request("list nodes", "GET", "/api/v1/nodes", {}, query=query).get("items") or [])

    def list_pods(self, *, field_selector: str = "") -> list[JsonDict]:
        """Every Pod in every namespace matching the field selector (one unpaged LIST)."""
        query = [("fieldSelector", field_selector)] if field_selector else []
        return list(self._request("list pods", "GET", "/api/v1/pods", {}, query=query).get("items") or [])

    def patch_node(self, name: str, patch: JsonDict) -> None:
        """A JSON merge patch of the Node (labels, annotations, spec.taints); `Conflict` when it carries a
        metadata.resourceVersion that is no longer current."""
        self._request(f"patch node {name}", "PATCH", _NODE, {"name": name}, body=patch, content_type=_MERGE_PATCH)

    def read_config_map(self, namespace: str, name: str) -> JsonDict | None:
        try:
            return self._request(f"read ConfigMap {namespace}/{name}", "GET", _CONFIG_MAP,
                                 {"namespace": namespace, "name": name})
        except NotFound:
            return None

    def create_config_map(self, config_map: JsonDict) -> None:
        namespace, name = _namespace_and_name(config_map)
        self._request(f"create ConfigMap {namespace}/{name}", "POST", _CONFIG_MAPS, {"namespace": namespace},
                      body=config_map)

    def replace_config_map(self, config_map: JsonDict) -> None:
        namespace, name = _namespace_and_name(config_map)
        self._request(f"replace ConfigMap {namespace}/{name}", "PUT", _CONFIG_MAP,
                      {"namespace": namespace, "name": name}, body=config_map)

    def _request(
        self, operation: str, method: str, path: str, path_params: dict[str, str], *, body: JsonDict | None = None,
        content_type: str = "application/json", query: list[tuple[str, str]] | None = None,
    ) -> JsonDict:
        request = self._api.param_serialize(
            method=method, resource_path=path, path_params=path_params, body=body, auth_settings=["BearerToken"],
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
        )
        response = _call(operation, lambda: self._api.call_api(*request, _request_timeout=REQUEST_TIMEOUT))
        data = _call(operation, response.read)
        if not 200 <= response.status <= 299:
            raise _api_error(operation, response.status, data)
        decoded: JsonDict = json.loads(data)
        return decoded


_NODE = "/api/v1/nodes/{name}"
_CONFIG_MAPS = "/api/v1/namespaces/{namespace}/configmaps"
_CONFIG_MAP = "/api/v1/namespaces/{namespace}/configmaps/{name}"


def _call(operation: str, request: Callable[[], Any]) -> Any:
    try:
        return request()
    except ApiException as error:  # the client's own failures (TLS, for one), before any HTTP status
        raise NodeApiError(operation, str(error.reason or error).strip(), status=error.status or None) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise NodeApiError(operation, f"API server unreachable ({error})") from None


def _api_error(operation: str, status: int, body: bytes) -> NodeApiError:
    kind = {404: NotFound, 409: Conflict}.get(status, NodeApiError)
    return kind(operation, f"HTTP {status}: {_status_message(body) or 'error'}", status=status)


def _status_message(body: bytes) -> str:
    """The `message` of a metav1.Status body, if that is what the server sent."""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    return str(status.get("message", "")) if isinstance(status, dict) else ""


def _namespace_and_name(obj: JsonDict) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace", "default")), str(metadata.get("name", ""))


class ClusterStateNodes:
    """`NodeApi` on a cluster-state file, with the API server's optimistic concurrency for ConfigMaps.

    Several agents share one file in the demo. Each write runs under the file's lock, and `replace_config_map`
    refuses (Conflict) when the stored object's resourceVersion differs from the one read, so two agents adding
    entries at the same time never lose one, exactly as against a real API server.
    """

    def __init__(self, state: ClusterStateFile) -> None:
        self.state = state

    def read_node(self, name: str) -> JsonDict:
        node = self._load(f"read node {name}").nodes.get(name)
        if node is None:
            raise NotFound(f"read node {name}", f"no Node {name} in {self.state.path}", status=404)
        return node

    def patch_node_metadata(
        self, name: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {}
    ) -> None:
        operation = f"patch node {name}"
        try:
            self.state.patch_metadata("Node", name, labels=labels, annotations=annotations)
        except ClusterStateError as error:
            raise NotFound(operation, str(error), status=404) from None
        except OSError as error:
            raise NodeApiError(operation, str(error)) from None

    def read_config_map(self, namespace: str, name: str) -> JsonDict | None:
        return self._load(f"read ConfigMap {namespace}/{name}").config_maps.get((namespace, name))

    def create_config_map(self, config_map: JsonDict) -> None:
        namespace, name = _namespace_and_name(config_map)

        def create(items: list[JsonDict]) -> bool:
            if _find_config_map(items, namespace, name) is not None:
                raise Conflict(f"create ConfigMap {namespace}/{name}", "already exists", status=409)
            items.append(_with_version(config_map, 1))
            return True

        self._update(f"create ConfigMap {namespace}/{name}", create)

    def replace_config_map(self, config_map: JsonDict) -> None:
        namespace, name = _namespace_and_name(config_map)
        operation = f"replace ConfigMap {namespace}/{name}"

        def replace(items: list[JsonDict]) -> bool:
            current = _find_config_map(items, namespace, name)
            if current is None:
                raise NotFound(operation, "does not exist", status=404)
            version = _version(current)
            if str(version) != str((config_map.get("metadata") or {}).get("resourceVersion", "")):
                raise Conflict(operation, "the object has been modified; read it again", status=409)
            items[items.index(current)] = _with_version(config_map, version + 1)
            return True

        self._update(operation, replace)

    def _load(self, operation: str) -> ClusterObjects:
        try:
            return self.state.load()
        except (OSError, ClusterStateError) as error:
            raise NodeApiError(operation, str(error)) from None

    def _update(self, operation: str, change: Callable[[list[JsonDict]], bool]) -> None:
        try:
            self.state.update(change)
        except (OSError, ClusterStateError) as error:
            raise NodeApiError(operation, str(error)) from None


def _find_config_map(items: list[JsonDict], namespace: str, name: str) -> JsonDict | None:
    matches = (i for i in items if i.get("kind") == "ConfigMap" and _namespace_and_name(i) == (namespace, name))
    return next(matches, None)


def _version(obj: JsonDict) -> int:
    value = str((obj.get("metadata") or {}).get("resourceVersion", "0"))
    return int(value) if value.isdigit() else 0


def _with_version(obj: JsonDict, version: int) -> JsonDict:
    stored = copy.deepcopy(obj)
    stored.setdefault("metadata", {})["resourceVersion"] = str(version)
    return stored

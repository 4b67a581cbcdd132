"""List-then-watch of Nodes, Pods, Namespaces and (on DRA clusters) ResourceSlices, ResourceClaims and
ResourceClaimTemplates through the kubernetes client, delivered as plain dicts to a handler.

The informer pattern without the informer: each kind runs in its own thread, LISTs in pages (raw JSON, no model
deserialization: the extender reads a handful of fields from thousands of objects), hands the full list to
`handler.synced`, then WATCHes from the list's resourceVersion and hands every ADDED/MODIFIED/DELETED object to
`handler.changed`. Bookmarks keep the resourceVersion fresh; a `410 Gone` (the version fell out of the API server's
window) or any error re-lists after a backoff, so a missed deletion can never linger (the stale-cache failure of
HAMi#2923 and gpushare#187).

Handlers are called from the watch threads; callers that keep state on an event loop forward the calls there.
This module only moves objects: what they mean is the caller's business.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from gpuguard.k8s.cluster_state import DRA_KINDS, DraKind

log = logging.getLogger(__name__)

Kind = Literal["Node", "Pod", "Namespace"] | DraKind
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
JsonDict = dict[str, Any]


class WatchHandler(Protocol):
    def synced(self, kind: Kind, objects: list[JsonDict]) -> None:
        """The complete current list (first sync and every re-list)."""

    def changed(self, kind: Kind, event: EventType, obj: JsonDict) -> None:
        """One change after the last sync."""


@dataclass(frozen=True, slots=True)
class WatchSettings:
    page_size: int = 500
    """Objects per LIST page; big clusters list in pages so the API server never builds one huge response."""
    watch_seconds: int = 300
    """Server-side timeout of one WATCH call; the watch is then resumed from the last resourceVersion."""
    backoff: float = 1.0
    """Seconds before re-listing after an error, doubled per consecutive failure up to `max_backoff`."""
    max_backoff: float = 30.0
    pod_field_selector: str = "spec.nodeName!="
    """Only bound pods hold node resources."""


class _Gone(Exception):
    """The watch's resourceVersion is too old: re-list."""


class KindWatcher:
    """Keeps one kind in sync with the API server in a daemon thread until `stop()`."""

    def __init__(
        self, api: client.ApiClient, kind: Kind, handler: WatchHandler, *, settings: WatchSettings = WatchSettings()
    ) -> None:
        self.kind = kind
        self._handler = handler
        self._settings = settings
        self._list: Callable[..., Any] = _lister(api, kind)
        self._selector = settings.pod_field_selector if kind == "Pod" else ""
        self._stopped = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind.lower()}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        _interrupt(self._response)
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                version = self._list_all()
                failures = 0
                self._watch_from(version)
            except _Gone:
                log.info("%s watch expired; re-listing", self.kind)
            except Exception as error:  # the API server may be away for a while: keep trying, loudly
                if self._stopped.is_set():
                    return
                failures += 1
                delay = min(self._settings.backoff * 2 ** (failures - 1), self._settings.max_backoff)
                log.warning("%s list/watch failed (%s); retrying in %.1fs", self.kind, _brief(error), delay)
                self._stopped.wait(delay)

    def _list_all(self) -> str:
        objects: list[JsonDict] = []
        token = ""
        while True:
            response = self._list(
                limit=self._settings.page_size, _continue=token or None, field_selector=self._selector or None,
                _preload_content=False,
            )
            page = json.loads(response.data)
            objects += page.get("items") or []
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or ""
            if not token:
                break
        self._handler.synced(self.kind, objects)
        return str(metadata.get("resourceVersion") or "")

    def _watch_from(self, version: str) -> None:
        while not self._stopped.is_set():
            response = self._list(
                watch=True, resource_version=version, allow_watch_bookmarks=True,
                timeout_seconds=self._settings.watch_seconds, field_selector=self._selector or None,
                _preload_content=False, _request_timeout=(10, self._settings.watch_seconds + 30),
            )
            self._response = response
            try:
                for line in iter_resp_lines(response):
                    version = self._apply(json.loads(line), version)
                    if self._stopped.is_set():
                        return
            finally:
                self._response = None
                response.release_conn()

    def _apply(self, event: JsonDict, version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        new_version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._handler.changed(self.kind, kind, obj)
        return new_version


def _lister(api: client.ApiClient, kind: Kind) -> Callable[..., Any]:
    core, dra = client.CoreV1Api(api), client.ResourceV1Api(api)
    listers: dict[Kind, Callable[..., Any]] = {
        "Node": core.list_node,
        "Pod": core.list_pod_for_all_namespaces,
        "Namespace": core.list_namespace,
        "ResourceSlice": dra.list_resource_slice,
        "ResourceClaim": dra.list_resource_claim_for_all_namespaces,
        "ResourceClaimTemplate": dra.list_resource_claim_template_for_all_namespaces,
    }
    return listers[kind]


def _interrupt(response: Any) -> None:
    """Wake the watch thread blocked reading `response`: shutting the socket down makes its read return at once
    (closing the response from this thread instead would wait for the reader's lock)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _brief(error: Exception) -> str:
    status = getattr(error, "status", None)
    return f"HTTP {status}: {getattr(error, 'reason', '')}" if status else f"{type(error).__name__}: {error}"


class ClusterWatch:
    """Nodes and bound Pods, and with `dra` the DRA kinds, each in its own `KindWatcher`."""

    def __init__(
        self, api: client.ApiClient, handler: WatchHandler, *, settings: WatchSettings = WatchSettings(),
        dra: bool = False,
    ) -> None:
        kinds: tuple[Kind, ...] = ("Node", "Pod", *(DRA_KINDS if dra else ()))
        self._watchers = [KindWatcher(api, kind, handler, settings=settings) for kind in kinds]

    def start(self) -> None:
        for watcher in self._watchers:
            watcher.start()

    def stop(self) -> None:
        for watcher in self._watchers:
            watcher.stop()

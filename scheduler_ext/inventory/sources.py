"""Where the store's nodes, pods and DRA objects come from: a `--cluster-state` file, or a Kubernetes watch.

Both run in the background as async context managers (aiohttp cleanup contexts) and change the store only on the
event loop, so request handlers never see a half-applied change. The file is polled (a stat per interval) and re-read
when it changed; a broken file keeps the last good state and is logged once per distinct error. The watch runs in
threads (`gpuguard.k8s.watch`) and forwards each change to the loop.

After a full load the garbage collector's view is refrozen (`on_loaded`), so the long-lived state never costs a
collection on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from gpuguard.k8s.cluster_state import DRA_KINDS, ClusterObjects, ClusterStateError, ClusterStateFile
from gpuguard.k8s.watch import ClusterWatch, EventType, JsonDict, Kind
from scheduler_ext.inventory.store import InventoryStore

log = logging.getLogger(__name__)

Callback = Callable[[], None]


class ClusterStateSource:
    """Loads Nodes and Pods from a cluster-state file, again whenever the file changes."""

    def __init__(self, path: Path, store: InventoryStore, *, on_loaded: Callback = lambda: None) -> None:
        self._file = ClusterStateFile(path)
        self._store = store
        self._on_loaded = on_loaded
        self._last_error = ""
        self.loads = 0

    async def check(self) -> bool:
        """Re-read the file if it changed; True when a new state was applied."""
        try:
            if not self._file.changed():
                return False
            objects = await asyncio.to_thread(self._file.load)
        except (OSError, ClusterStateError) as error:
            self._refuse(str(error))
            return False
        self._apply(objects)
        return True

    def _apply(self, objects: ClusterObjects) -> None:
        self._store.replace_nodes(objects.nodes.values())
        self._store.replace_pods(objects.pods)
        for kind in DRA_KINDS:
            self._store.replace_dra(kind, objects.dra.get(kind, []))
        self.loads += 1
        self._last_error = ""
        log.info("cluster state %s: %d nodes, %d GPU pods", self._file.path, self._store.node_count,
                 self._store.pod_count)
        self._on_loaded()

    def _refuse(self, reason: str) -> None:
        if reason != self._last_error:
            log.error("cannot use cluster state %s (keeping the last good one): %s", self._file.path, reason)
            self._last_error = reason

    @contextlib.asynccontextmanager
    async def running(self, interval: float) -> AsyncIterator[None]:
        await self.check()
        task = asyncio.create_task(self._poll(interval))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.check()


class WatchSource:
    """Applies a `ClusterWatch`'s lists and changes to the store, on the event loop."""

    def __init__(
        self, watch_factory: Callable[[WatchSourceHandler], ClusterWatch], store: InventoryStore,
        *, on_loaded: Callback = lambda: None,
    ) -> None:
        self._factory = watch_factory
        self._store = store
        self._on_loaded = on_loaded

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        handler = WatchSourceHandler(asyncio.get_running_loop(), self._store, self._on_loaded)
        watch = self._factory(handler)
        watch.start()
        try:
            yield
        finally:
            await asyncio.to_thread(watch.stop)


class WatchSourceHandler:
    """The `WatchHandler` the watch threads call; each call is re-scheduled onto the loop that owns the store."""

    def __init__(self, loop: asyncio.AbstractEventLoop, store: InventoryStore, on_loaded: Callback) -> None:
        self._loop = loop
        self._store = store
        self._on_loaded = on_loaded

    def synced(self, kind: Kind, objects: list[JsonDict]) -> None:
        self._loop.call_soon_threadsafe(self._synced, kind, objects)

    def changed(self, kind: Kind, event: EventType, obj: JsonDict) -> None:
        self._loop.call_soon_threadsafe(self._changed, kind, event, obj)

    def _synced(self, kind: Kind, objects: list[JsonDict]) -> None:
        if kind == "Node":
            self._store.replace_nodes(objects)
        elif kind == "Pod":
            self._store.replace_pods(objects)
        else:
            self._store.replace_dra(kind, objects)
        log.info("%s list synced: %d nodes, %d GPU pods", kind, self._store.node_count, self._store.pod_count)
        if self._store.ready:
            self._on_loaded()

    def _changed(self, kind: Kind, event: EventType, obj: JsonDict) -> None:
        if kind == "Node":
            self._store.delete_node(obj) if event == "DELETED" else self._store.upsert_node(obj)
        elif kind == "Pod":
            self._store.delete_pod(obj) if event == "DELETED" else self._store.upsert_pod(obj)
        else:
            self._store.delete_dra(kind, obj) if event == "DELETED" else self._store.upsert_dra(kind, obj)

"""A YAML or JSON file of Node, Pod, ConfigMap and DRA objects that stands in for the API server.

`--cluster-state FILE` lets the demo, the simulator, dry runs and tests run every service without a cluster: the
extender reads nodes and pods from it (and, on a DRA cluster, ResourceSlices, ResourceClaims and
ResourceClaimTemplates), node agents write their inventory annotation, labels and the time-slicing
ConfigMap into it, and the demo binds pods into it. The file is a list of objects or a `kind: List`. Writers take
an exclusive lock on `FILE.lock` and replace the file atomically, so concurrent agents never lose each other's
updates and readers never see half a file.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

JsonDict = dict[str, Any]
DraKind = Literal["ResourceSlice", "ResourceClaim", "ResourceClaimTemplate"]
DRA_KINDS: tuple[DraKind, ...] = ("ResourceSlice", "ResourceClaim", "ResourceClaimTemplate")
"""resource.k8s.io/v1 (Kubernetes 1.34+): what the extender models DRA nodes and claim shapes from."""


class ClusterStateError(ValueError):
    """The file is not a list of Kubernetes objects."""


@dataclass(frozen=True, slots=True)
class ClusterObjects:
    nodes: dict[str, JsonDict] = field(default_factory=dict)
    pods: list[JsonDict] = field(default_factory=list)
    config_maps: dict[tuple[str, str], JsonDict] = field(default_factory=dict)
    """Keyed by (namespace, name)."""
    dra: dict[str, list[JsonDict]] = field(default_factory=dict)
    """ResourceSlice, ResourceClaim and ResourceClaimTemplate objects, by kind."""


def parse_objects(text: str) -> list[JsonDict]:
    """The objects in a YAML/JSON list, a `kind: List`, or a multi-document YAML stream."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        raise ClusterStateError(f"not valid YAML or JSON: {error}") from None
    items: list[Any] = []
    for document in documents:
        if isinstance(document, list):
            items += document
        elif isinstance(document, dict) and document.get("kind") == "List":
            items += document.get("items") or []
        elif isinstance(document, dict):
            items.append(document)
        else:
            raise ClusterStateError(f"expected Kubernetes objects, got {type(document).__name__}")
    bad = [i for i, item in enumerate(items) if not isinstance(item, dict) or not item.get("kind")]
    if bad:
        raise ClusterStateError(f"items {bad} are not Kubernetes objects (no kind)")
    return items


def group_objects(items: list[JsonDict]) -> ClusterObjects:
    objects = ClusterObjects()
    for item in items:
        metadata = item.get("metadata") or {}
        if item["kind"] == "Node":
            objects.nodes[str(metadata.get("name", ""))] = item
        elif item["kind"] == "Pod":
            objects.pods.append(item)
        elif item["kind"] in DRA_KINDS:
            objects.dra.setdefault(item["kind"], []).append(item)
        elif item["kind"] == "ConfigMap":
            objects.config_maps[(str(metadata.get("namespace", "default")), str(metadata.get("name", "")))] = item
    return objects


class ClusterStateFile:
    """Read and update a cluster-state file safely from several processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> ClusterObjects:
        return group_objects(parse_objects(self.path.read_text(encoding="utf-8")))

    def changed(self) -> bool:
        """True the first time and whenever the file was replaced or modified since the last call."""
        info = self.path.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def update(self, change: Callable[[list[JsonDict]], bool]) -> bool:
        """Apply `change` to the object list under the lock; write back only when it returns True."""
        with self._locked():
            items = parse_objects(self.path.read_text(encoding="utf-8"))
            if not change(items):
                return False
            self._write(items)
            return True

    def patch_metadata(
        self, kind: str, name: str, *, labels: Mapping[str, str | None] = {}, annotations: Mapping[str, str | None] = {},
        namespace: str | None = None,
    ) -> bool:
        """Set (or, with None, remove) labels and annotations of one object; True if anything changed."""

        def change(items: list[JsonDict]) -> bool:
            target = _find(items, kind, name, namespace)
            if target is None:
                raise ClusterStateError(f"{kind} {name} is not in {self.path}")
            metadata = target.setdefault("metadata", {})
            return _merge(metadata, "labels", labels) | _merge(metadata, "annotations", annotations)

        return self.update(change)

    def put(self, obj: JsonDict) -> bool:
        """Create or replace an object (matched by kind, namespace and name); True if it changed."""

        def change(items: list[JsonDict]) -> bool:
            metadata = obj.get("metadata") or {}
            existing = _find(items, obj["kind"], metadata.get("name", ""), metadata.get("namespace"))
            if existing == obj:
                return False
            if existing is not None:
                items.remove(existing)
            items.append(copy.deepcopy(obj))
            return True

        return self.update(change)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, items: list[JsonDict]) -> None:
        document = {"apiVersion": "v1", "kind": "List", "items": items}
        if self.path.suffix == ".json":
            text = json.dumps(document, indent=1)
        else:
            text = yaml.safe_dump(document, sort_keys=False)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, self.path)


def _find(items: list[JsonDict], kind: str, name: str, namespace: str | None) -> JsonDict | None:
    for item in items:
        metadata = item.get("metadata") or {}
        if item.get("kind") != kind or metadata.get("name") != name:
            continue
        if namespace is None or metadata.get("namespace", "default") == namespace:
            return item
    return None


def _merge(metadata: JsonDict, section: str, values: Mapping[str, str | None]) -> bool:
    current = metadata.setdefault(section, {}) or {}
    metadata[section] = current
    changed = False
    for key, value in values.items():
        if value is None:
            changed |= current.pop(key, None) is not None
        elif current.get(key) != value:
            current[key] = value
            changed = True
    return changed

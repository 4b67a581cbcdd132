"""The extender's DRA objects: ResourceSlices, ResourceClaims and ResourceClaimTemplates, and what they mean per node.

Kept beside the node and pod cache (`InventoryStore` owns one): slices say which NVIDIA devices each node has, the
claims' allocations say which of them are held, and claim and template specs say what a claim pod asks for
(`ClaimBook`). Every change returns the nodes whose devices or held devices it touched, so the store rebuilds only
those. Single-threaded, like the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuguard.policy.dra import (
    DEFAULT_CLASSES,
    ClaimBook,
    ClaimKey,
    DeviceKey,
    DraClasses,
    DraDevice,
    SliceFacts,
    allocated_devices,
    node_devices,
    slice_facts,
)
from gpuguard.policy.podspec import mapping

JsonDict = dict[str, Any]


def _key(obj: JsonDict) -> ClaimKey:
    metadata = mapping(obj.get("metadata"))
    return (str(metadata.get("namespace") or "default"), str(metadata.get("name") or ""))


class DraCache:
    def __init__(self, classes: DraClasses = DEFAULT_CLASSES) -> None:
        self._slices: dict[str, SliceFacts] = {}
        """By slice name (cluster-scoped)."""
        self._claims: dict[ClaimKey, Mapping[str, Any]] = {}
        self._templates: dict[ClaimKey, Mapping[str, Any]] = {}
        self._allocations: dict[ClaimKey, tuple[DeviceKey, ...]] = {}
        self.devices: dict[str, tuple[DraDevice, ...]] = {}
        """Node name -> the NVIDIA devices its slices publish (newest pool generations)."""
        self.held: frozenset[DeviceKey] = frozenset()
        """Every device an allocated claim holds."""
        self._node_of: dict[DeviceKey, str] = {}
        self.book = ClaimBook(self._claims, self._templates, classes)

    def use_classes(self, classes: DraClasses) -> None:
        if classes != self.book.classes:
            self.book = ClaimBook(self._claims, self._templates, classes)

    @property
    def slice_count(self) -> int:
        return len(self._slices)

    # ----------------------------------------------------------------------------------------------------- changes

    def replace(self, kind: str, objects: Iterable[JsonDict]) -> set[str]:
        """The complete list of one kind (a sync, or a cluster-state load)."""
        items = list(objects)
        if kind == "ResourceSlice":
            self._slices.clear()
            return self._after_slices(items, ())
        if kind == "ResourceClaimTemplate":
            self._templates.clear()
            for obj in items:
                self._templates[_key(obj)] = mapping(mapping(obj.get("spec")).get("spec"))
            return set()
        touched = {self._node_of.get(k, "") for keys in self._allocations.values() for k in keys}
        self._claims.clear()
        self._allocations.clear()
        for obj in items:
            touched |= self._put_claim(obj)
        return self._after_claims(touched)

    def upsert(self, kind: str, obj: JsonDict) -> set[str]:
        if kind == "ResourceSlice":
            return self._after_slices([obj], [self._slice_name(obj)])
        if kind == "ResourceClaimTemplate":
            self._templates[_key(obj)] = mapping(mapping(obj.get("spec")).get("spec"))
            return set()
        return self._after_claims(self._drop_claim(_key(obj)) | self._put_claim(obj))

    def delete(self, kind: str, obj: JsonDict) -> set[str]:
        if kind == "ResourceSlice":
            return self._after_slices([], [self._slice_name(obj)])
        if kind == "ResourceClaimTemplate":
            self._templates.pop(_key(obj), None)
            return set()
        return self._after_claims(self._drop_claim(_key(obj)))

    # ---------------------------------------------------------------------------------------------------- slices

    @staticmethod
    def _slice_name(obj: JsonDict) -> str:
        return str(mapping(obj.get("metadata")).get("name") or "")

    def _after_slices(self, added: Iterable[JsonDict], removed: Iterable[str]) -> set[str]:
        for name in removed:
            self._slices.pop(name, None)
        for obj in added:
            facts = slice_facts(obj)
            if facts is not None:
                self._slices[self._slice_name(obj)] = facts
        before = self.devices
        self.devices = node_devices(self._slices.values())
        self._node_of = {d.key: node for node, devices in self.devices.items() for d in devices}
        return {n for n in before.keys() | self.devices.keys() if before.get(n) != self.devices.get(n)}

    # ---------------------------------------------------------------------------------------------------- claims

    def _put_claim(self, obj: JsonDict) -> set[str]:
        key = _key(obj)
        self._claims[key] = mapping(obj.get("spec"))
        held = allocated_devices(obj)
        if held:
            self._allocations[key] = held
        return {self._node_of.get(k, "") for k in held}

    def _drop_claim(self, key: ClaimKey) -> set[str]:
        self._claims.pop(key, None)
        return {self._node_of.get(k, "") for k in self._allocations.pop(key, ())}

    def _after_claims(self, touched: set[str]) -> set[str]:
        self.held = frozenset(k for keys in self._allocations.values() for k in keys)
        return touched - {""}

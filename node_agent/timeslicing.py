"""Time-slicing: the NVIDIA device plugin config entry this node should use, and the label that selects it.

From policy `timeSlicing.nodes` (first rule whose `nodeLabels` all match this node's labels) the agent writes a
named entry into the device plugin's ConfigMap (`version: v1`, `sharing.timeSlicing.resources[{name, replicas}]`)
and points the node label `nvidia.com/device-plugin.config` at it. The plugin's config-manager reacts only to that
label changing: editing an entry in place does nothing until the plugin restarts (NVIDIA/gpu-operator#1144). So an
entry is never edited once written: its name comes from its content (`gpuguard-ts4-<hash>`), a different content
gets a different name, and the label is flipped to it. The entry is written before the label points at it, and
the label is flipped only `SETTLE_SECONDS` after the agent first saw the entry in the ConfigMap: config-manager reads
the entry from the ConfigMap volume mounted in the device plugin's pod, which the kubelet updates on its own
schedule (its sync period, one minute by default, plus the ConfigMap cache's delay; see "Mounted ConfigMaps are
updated automatically" in the Kubernetes documentation). A label naming an entry not yet in that volume makes
config-manager exit ("specified config ... does not exist", NVIDIA/k8s-device-plugin cmd/config-manager/main.go)
and its container restart. The agent re-plans at least every node refresh, so the flip follows within a minute of
the wait. An entry found already in the ConfigMap needs no wait when the API server's record of the ConfigMap's last
write (`metadata.managedFields[].time`) is older than that; without such a record (a cluster-state file) the wait
starts when the agent first sees the entry, so a one-shot run (`--once`) writes the entry and leaves the label to a
later run.

Old entries stay (another node may still use them). When no rule matches any more the label is removed, but only
if it names one of our entries: a config an admin selected by hand is left alone. A `default` entry without sharing
is added when the ConfigMap has none, because the device plugin falls back to the only entry when no default is
named, which would time-slice every unlabelled node. The entry carries no `flags`, so the plugin keeps the
MIG strategy and other flags it was deployed with.

The planning functions are pure; `TimeSlicer` is the thin shell that reads and writes through `NodeApi`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import yaml

from gpuguard.k8s.cluster_state import JsonDict
from gpuguard.k8s.nodes import Conflict, NodeApi, NodeApiError
from gpuguard.policy.mig import base_product
from gpuguard.policy.model import ConfigMapRef, TimeSlicing, TimeSlicingNodes
from node_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

LABEL = "nvidia.com/device-plugin.config"
ENTRY_PREFIX = "gpuguard-ts"
DEFAULT_ENTRY = "default"
DEFAULT_CONFIG = "version: v1\n"
"""A device plugin config with no sharing: what unlabelled nodes get."""
SHARED_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MIN_REPLICAS = 2
"""The device plugin rejects a time-slicing config with fewer replicas."""
SETTLE_SECONDS = 120.0
"""Seconds between first seeing an entry in the ConfigMap and pointing the label at it: the kubelet's default sync
period (60 s, with up to half of it again as jitter) plus the ConfigMap cache's propagation, with room to spare."""
WRITE_ATTEMPTS = 3
"""Re-read and retry this often when another agent changed the ConfigMap between our read and write."""


class TimeSlicingError(ValueError):
    """The policy asks for something the device plugin would refuse."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    text: str


@dataclass(frozen=True, slots=True)
class LabelChange:
    value: str | None
    """The new label value; None removes the label."""


def matching_rule(config: TimeSlicing, labels: Mapping[str, str]) -> TimeSlicingNodes | None:
    """The first rule whose node labels all match, or None."""
    return next((rule for rule in config.nodes if _matches(rule, labels)), None)


def _matches(rule: TimeSlicingNodes, labels: Mapping[str, str]) -> bool:
    return all(_label_matches(key, value, labels.get(key)) for key, value in rule.match.node_labels.items())


def _label_matches(key: str, wanted: str, actual: str | None) -> bool:
    """Exact, except the GPU product: once a node is time-sliced (renameByDefault false) GPU Feature Discovery
    writes `Tesla-T4-SHARED` where it wrote `Tesla-T4`. Matching that exactly would remove the node's config label,
    the plugin would stop sharing, GFD would write `Tesla-T4` again, and the node would flap for ever."""
    if actual is None:
        return False
    if key == PRODUCT_LABEL:
        return base_product(actual) == base_product(wanted)
    return actual == wanted


def entry_text(config: TimeSlicing, replicas: int) -> str:
    """The device plugin config (api/config/v1) that shares each GPU `replicas` ways."""
    if replicas < MIN_REPLICAS:
        raise TimeSlicingError(
            f"timeSlicing replicas is {replicas}, must be at least {MIN_REPLICAS}: the NVIDIA device plugin refuses "
            "fewer; remove the rule to stop time-slicing those nodes")
    sharing = {
        "renameByDefault": config.rename_by_default,
        "failRequestsGreaterThanOne": config.fail_requests_greater_than_one,
        "resources": [{"name": SHARED_RESOURCE, "replicas": replicas}],
    }
    return yaml.safe_dump({"version": "v1", "sharing": {"timeSlicing": sharing}}, sort_keys=False)


def entry_for(config: TimeSlicing, replicas: int) -> Entry:
    text = entry_text(config, replicas)
    return Entry(f"{ENTRY_PREFIX}{replicas}-{hashlib.sha256(text.encode()).hexdigest()[:8]}", text)


def desired_entry(config: TimeSlicing, labels: Mapping[str, str]) -> Entry | None:
    rule = matching_rule(config, labels)
    return entry_for(config, rule.replicas) if rule is not None else None


def placed(entry: Entry, data: Mapping[str, str]) -> Entry:
    """The entry under the first name that is free or already holds exactly this text (never overwrite another)."""
    names = itertools.chain([entry.name], (f"{entry.name}-{n}" for n in itertools.count(2)))
    return next(Entry(name, entry.text) for name in names if data.get(name, entry.text) == entry.text)


def with_entry(existing: JsonDict | None, ref: ConfigMapRef, entry: Entry) -> tuple[JsonDict | None, Entry]:
    """The ConfigMap to write (None if it already holds the entry) and the name the entry ends up under."""
    data = dict((existing or {}).get("data") or {})
    entry = placed(entry, data)
    if data.get(entry.name) == entry.text:
        return None, entry
    data[entry.name] = entry.text
    data.setdefault(DEFAULT_ENTRY, DEFAULT_CONFIG)
    if existing is None:
        metadata: JsonDict = {"name": ref.name, "namespace": ref.namespace,
                              "labels": {"app.kubernetes.io/managed-by": "gpuguard"}}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}, entry
    return {**existing, "data": data}, entry


def label_change(current: str | None, entry: Entry | None) -> LabelChange | None:
    """Point the label at the entry; with no entry, remove the label only if it names one of ours."""
    if entry is not None:
        return None if current == entry.name else LabelChange(entry.name)
    if current is not None and current.startswith(ENTRY_PREFIX):
        return LabelChange(None)
    return None


def last_written(config_map: JsonDict | None) -> float | None:
    """Unix time of the object's newest `managedFields[].time` (the API server sets it on every write), or None."""
    fields = ((config_map or {}).get("metadata") or {}).get("managedFields") or []
    times = []
    for entry in fields if isinstance(fields, list) else []:
        stamp = entry.get("time") if isinstance(entry, dict) else None
        try:
            times.append(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
        except ValueError:
            continue
    return max(times) if times else None


def describe_label(node: str, change: LabelChange, current: str | None) -> str:
    if change.value is None:
        return f"remove label {LABEL} (was {current}) from node {node}"
    return f"set label {LABEL}={change.value} on node {node} (was {current or 'unset'})"


class TimeSlicer:
    """Brings one node's device plugin config in line with the policy. With `dry_run`, only says what it would do."""

    def __init__(
        self, api: NodeApi, node: str, *, metrics: AgentMetrics, dry_run: bool = False,
        say: Callable[[str], None] = print, settle: float = SETTLE_SECONDS,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._node = node
        self._metrics = metrics
        self._dry_run = dry_run
        self._say = say
        self._settle = settle
        self._clock = clock
        self._wall = wall
        self._seen: tuple[str, float] | None = None
        """The entry waiting to be projected before the label may name it, and when it was first seen."""

    def apply(self, config: TimeSlicing, labels: Mapping[str, str]) -> str | None:
        """Make the changes; the label value in force afterwards (as it would be, in a dry run)."""
        current = labels.get(LABEL)
        entry = desired_entry(config, labels)
        written_at: float | None = None
        if entry is not None:
            entry, written_at = self._ensure_entry(config.config_map, entry)
        change = label_change(current, entry)
        if change is None:
            return current
        if change.value is not None and not self._projected(change.value, written_at):
            return current
        self._report(describe_label(self._node, change, current))
        if not self._dry_run:
            self._api.patch_node_metadata(self._node, labels={LABEL: change.value})
            self._metrics.time_slicing_changes.labels("label_set" if change.value else "label_removed").inc()
        return change.value

    def _projected(self, name: str, written_at: float | None) -> bool:
        """Whether the kubelet has had `settle` seconds to put entry `name` into the device plugin's volume.

        `written_at`: unix time of the ConfigMap's last write by the API server's record, when the entry was already
        there (None when it was just written, or no record exists)."""
        if self._dry_run or self._settle <= 0:
            return True
        if written_at is not None and self._wall() - written_at >= self._settle:
            return True
        now = self._clock()
        if self._seen is None or self._seen[0] != name:
            self._seen = (name, now)
            log.info("time-slicing: entry %s is in the ConfigMap; label %s on node %s will name it in %.0f s, once "
                     "the kubelet has had time to project it into the device plugin's volume",
                     name, LABEL, self._node, self._settle)
        return now - self._seen[1] >= self._settle

    def _ensure_entry(self, ref: ConfigMapRef, entry: Entry) -> tuple[Entry, float | None]:
        """The entry as named in the ConfigMap, and when the ConfigMap was last written if the entry was there."""
        for _ in range(WRITE_ATTEMPTS):
            existing = self._api.read_config_map(ref.namespace, ref.name)
            update, entry = with_entry(existing, ref, entry)
            if update is None:
                return entry, last_written(existing)
            action = "create" if existing is None else "update"
            self._report(f"{action} ConfigMap {ref.namespace}/{ref.name}: add entry {entry.name}:\n{entry.text}")
            if self._dry_run:
                return entry, None
            try:
                (self._api.create_config_map if existing is None else self._api.replace_config_map)(update)
            except Conflict:
                continue  # another node's agent wrote first: read again and merge
            self._metrics.time_slicing_changes.labels("entry_written").inc()
            return entry, None
        raise NodeApiError(f"write ConfigMap {ref.namespace}/{ref.name}",
                           f"still conflicting with other writers after {WRITE_ATTEMPTS} attempts")

    def _report(self, change: str) -> None:
        if self._dry_run:
            self._say(f"[dry-run] would {change}")
        else:
            log.info("time-slicing: %s", change)

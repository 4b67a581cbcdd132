"""Time-slicing: rule matching, the device plugin ConfigMap entry, the node label, removal, and never editing in place."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from gpuguard.k8s.cluster_state import ClusterStateFile
from gpuguard.k8s.nodes import ClusterStateNodes, Conflict
from gpuguard.policy.loading import PolicyError, parse_policy
from gpuguard.policy.model import ConfigMapRef, NodeLabelMatch, TimeSlicing, TimeSlicingNodes
from node_agent.metrics import AgentMetrics
from node_agent.timeslicing import (
    DEFAULT_ENTRY,
    LABEL,
    SETTLE_SECONDS,
    Entry,
    LabelChange,
    TimeSlicer,
    TimeSlicingError,
    entry_for,
    entry_text,
    label_change,
    matching_rule,
    placed,
    with_entry,
)

T4 = {"nvidia.com/gpu.product": "Tesla-T4"}
A10 = {"nvidia.com/gpu.product": "NVIDIA-A10"}
REF = ConfigMapRef(namespace="gpu-operator", name="gpuguard-time-slicing")


def config(*rules: tuple[dict[str, str], int], **options: Any) -> TimeSlicing:
    nodes = [{"match": {"nodeLabels": labels}, "replicas": replicas} for labels, replicas in rules]
    return TimeSlicing.model_validate({"nodes": nodes, **options})


@pytest.mark.parametrize(("labels", "expected"), [
    ({**T4, "pool": "cheap"}, 4),  # all of the rule's labels present: extra labels do not matter
    ({**T4, "pool": "batch"}, 2),  # the first rule needs pool=cheap: the second (T4 only) matches
    (A10, None),
    ({}, None),
    # Once sliced, GFD renames the product: the node must keep matching, or its label would flap on and off.
    ({"nvidia.com/gpu.product": "Tesla-T4-SHARED"}, 2),
    ({"nvidia.com/gpu.product": "Tesla-T4-SHARED", "pool": "cheap"}, 4),
    ({"nvidia.com/gpu.product": "Tesla-T4X"}, None),
])
def test_the_first_rule_whose_labels_all_match_wins(labels: dict[str, str], expected: int | None) -> None:
    rules = config(({**T4, "pool": "cheap"}, 4), (T4, 2))
    rule = matching_rule(rules, labels)
    assert (rule.replicas if rule else None) == expected


def test_the_entry_is_a_device_plugin_time_slicing_config() -> None:
    document = yaml.safe_load(entry_text(config(renameByDefault=True, failRequestsGreaterThanOne=True), 4))
    assert document == {"version": "v1", "sharing": {"timeSlicing": {
        "renameByDefault": True, "failRequestsGreaterThanOne": True,
        "resources": [{"name": "nvidia.com/gpu", "replicas": 4}]}}}


def test_entry_names_follow_the_content() -> None:
    four, again = entry_for(config(), 4), entry_for(config(), 4)
    eight, renamed = entry_for(config(), 8), entry_for(config(renameByDefault=True), 4)
    assert four == again
    assert len({four.name, eight.name, renamed.name}) == 3
    assert four.name.startswith("gpuguard-ts4-") and eight.name.startswith("gpuguard-ts8-")
    assert len(four.name) <= 63  # also a label value


@pytest.mark.parametrize("replicas", [1, 0, -3])
def test_fewer_than_two_replicas_are_refused(replicas: int) -> None:
    with pytest.raises(TimeSlicingError, match=f"replicas is {replicas}, must be at least 2"):
        entry_text(TimeSlicing(), replicas)
    with pytest.raises(PolicyError, match=r"timeSlicing\.nodes\[0\]\.replicas"):
        parse_policy(f"apiVersion: gpuguard.io/v1\nkind: GpuPolicy\ntimeSlicing:\n  nodes:\n"
                     f"    - {{match: {{nodeLabels: {{a: b}}}}, replicas: {replicas}}}\n")


def test_an_entry_never_overwrites_a_different_one_under_its_name() -> None:
    entry = entry_for(config(), 4)
    assert placed(entry, {}) == entry
    assert placed(entry, {entry.name: entry.text}) == entry
    edited = {entry.name: "version: v1\n# edited by hand\n"}
    assert placed(entry, edited) == Entry(f"{entry.name}-2", entry.text)
    assert placed(entry, {**edited, f"{entry.name}-2": "other"}) == Entry(f"{entry.name}-3", entry.text)


def test_a_new_config_map_gets_the_entry_and_a_sharing_free_default() -> None:
    entry = entry_for(config(), 4)
    created, name = with_entry(None, REF, entry)
    assert created is not None and name == entry
    assert created["metadata"] == {"name": "gpuguard-time-slicing", "namespace": "gpu-operator",
                                   "labels": {"app.kubernetes.io/managed-by": "gpuguard"}}
    assert created["data"] == {entry.name: entry.text, DEFAULT_ENTRY: "version: v1\n"}
    kubernetes_validate.validate(created, "1.29.0", strict=True)


def test_an_existing_config_map_keeps_its_entries_and_its_default() -> None:
    existing = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "gpuguard-time-slicing", "namespace": "gpu-operator", "resourceVersion": "7"},
                "data": {"default": "version: v1\nflags: {migStrategy: mixed}\n", "mps": "version: v1\n"}}
    entry = entry_for(config(), 4)
    updated, _ = with_entry(existing, REF, entry)
    assert updated is not None
    assert updated["metadata"]["resourceVersion"] == "7"  # replaced only if nobody changed it meanwhile
    assert updated["data"] == {**existing["data"], entry.name: entry.text}
    assert with_entry(updated, REF, entry) == (None, entry)  # already there: nothing to write


@pytest.mark.parametrize(("current", "entry", "expected"), [
    (None, Entry("gpuguard-ts4-aa", ""), LabelChange("gpuguard-ts4-aa")),
    ("gpuguard-ts4-aa", Entry("gpuguard-ts4-aa", ""), None),
    ("gpuguard-ts4-aa", Entry("gpuguard-ts8-bb", ""), LabelChange("gpuguard-ts8-bb")),
    ("admin-mps", Entry("gpuguard-ts4-aa", ""), LabelChange("gpuguard-ts4-aa")),  # the policy says so
    ("gpuguard-ts4-aa", None, LabelChange(None)),  # no rule any more: remove our label
    ("admin-mps", None, None),  # an admin's choice is not ours to remove
    (None, None, None),
])
def test_the_label_points_at_the_entry_and_only_our_labels_are_removed(
    current: str | None, entry: Entry | None, expected: LabelChange | None
) -> None:
    assert label_change(current, entry) == expected


# The shell, against a cluster-state file.

@pytest.fixture
def state(tmp_path: Path) -> ClusterStateFile:
    path = tmp_path / "cluster.yaml"
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "t4-node", "labels": dict(T4)}}
    path.write_text(yaml.safe_dump([node]))
    return ClusterStateFile(path)


def slicer(state: ClusterStateFile, **options: Any) -> TimeSlicer:
    """A slicer that flips labels at once (the wait for the kubelet is tested on its own below)."""
    options.setdefault("settle", 0)
    return TimeSlicer(ClusterStateNodes(state), "t4-node", metrics=AgentMetrics(CollectorRegistry()), **options)


def labels(state: ClusterStateFile) -> dict[str, str]:
    return dict(state.load().nodes["t4-node"]["metadata"]["labels"])


def entries(state: ClusterStateFile) -> dict[str, str]:
    return dict(state.load().config_maps[("gpu-operator", "gpuguard-time-slicing")]["data"])


def test_a_matching_node_gets_its_entry_then_its_label(state: ClusterStateFile) -> None:
    value = slicer(state).apply(config((T4, 4)), labels(state))
    entry = entry_for(config(), 4)
    assert value == entry.name == labels(state)[LABEL]
    assert entries(state)[entry.name] == entry.text


def test_changing_replicas_writes_a_new_entry_and_flips_the_label(state: ClusterStateFile) -> None:
    slicer(state).apply(config((T4, 4)), labels(state))
    four = entries(state)
    slicer(state).apply(config((T4, 8)), labels(state))
    eight = entry_for(config(), 8)
    assert labels(state)[LABEL] == eight.name
    assert entries(state) == {**four, eight.name: eight.text}  # the old entry is untouched, not edited


def test_the_label_is_removed_when_no_rule_matches_any_more(state: ClusterStateFile) -> None:
    slicer(state).apply(config((T4, 4)), labels(state))
    assert slicer(state).apply(config((A10, 4)), labels(state)) is None
    assert LABEL not in labels(state)
    assert entry_for(config(), 4).name in entries(state)  # other nodes may still use it


def test_a_dry_run_says_every_change_and_makes_none(state: ClusterStateFile) -> None:
    said: list[str] = []
    before = state.path.read_text()
    value = slicer(state, dry_run=True, say=said.append).apply(config((T4, 4)), labels(state))
    entry = entry_for(config(), 4)
    assert value == entry.name
    assert state.path.read_text() == before
    assert said[0].startswith(f"[dry-run] would create ConfigMap gpu-operator/gpuguard-time-slicing: add entry "
                              f"{entry.name}")
    assert said[1] == f"[dry-run] would set label {LABEL}={entry.name} on node t4-node (was unset)"


def test_a_concurrent_writer_is_merged_with_not_overwritten(state: ClusterStateFile) -> None:
    api = ClusterStateNodes(state)
    api.create_config_map({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "gpuguard-time-slicing", "namespace": "gpu-operator"},
                           "data": {"default": "version: v1\n"}})

    class RacingApi(ClusterStateNodes):
        """Another node's agent adds its entry between our read and our write, once."""

        raced = False

        def replace_config_map(self, config_map: dict[str, Any]) -> None:
            if not self.raced:
                self.raced = True
                current = api.read_config_map("gpu-operator", "gpuguard-time-slicing")
                assert current is not None
                api.replace_config_map({**current, "data": {**current["data"], "gpuguard-ts2-other": "x"}})
            super().replace_config_map(config_map)

    racing = RacingApi(state)
    TimeSlicer(racing, "t4-node", metrics=AgentMetrics(CollectorRegistry())).apply(config((T4, 4)), labels(state))
    assert racing.raced
    assert {"gpuguard-ts2-other", entry_for(config(), 4).name} <= set(entries(state))


def test_a_rule_that_bypassed_validation_is_refused_before_anything_is_written(state: ClusterStateFile) -> None:
    rule = TimeSlicingNodes.model_construct(match=NodeLabelMatch(node_labels=T4), replicas=1)
    with pytest.raises(TimeSlicingError):
        slicer(state).apply(TimeSlicing.model_construct(config_map=REF, nodes=(rule,)), labels(state))
    assert ("gpu-operator", "gpuguard-time-slicing") not in state.load().config_maps
    assert LABEL not in labels(state)


def test_writers_that_keep_conflicting_give_up_with_an_api_error(state: ClusterStateFile) -> None:
    class AlwaysConflicting(ClusterStateNodes):
        def create_config_map(self, config_map: dict[str, Any]) -> None:
            raise Conflict("create ConfigMap", "already exists", status=409)

    with pytest.raises(Exception, match="still conflicting"):
        TimeSlicer(AlwaysConflicting(state), "t4-node", metrics=AgentMetrics(CollectorRegistry())).apply(
            config((T4, 4)), labels(state))
    assert LABEL not in labels(state)  # never a label pointing at an entry that was not written


# The label flip and the kubelet: config-manager reads the entry from the device plugin's ConfigMap volume, which
# the kubelet updates on its own schedule; a label naming an entry not projected yet makes config-manager exit.


class DevicePluginPod:
    """The device plugin pod on this node: its ConfigMap volume as the kubelet projects it (each key appears
    `delay` seconds after the API server has it), and config-manager, which on every label change looks the named
    config up in that volume and exits when it is missing ("specified config ... does not exist",
    NVIDIA/k8s-device-plugin cmd/config-manager/main.go), so its container restarts."""

    def __init__(self, state: ClusterStateFile, *, delay: float) -> None:
        self.state, self.delay = state, delay
        self.written_at: dict[str, float] = {}
        self.label: str | None = None
        self.restarts = 0
        self.applied: list[str] = []

    def tick(self, now: float) -> None:
        if ("gpu-operator", "gpuguard-time-slicing") in self.state.load().config_maps:
            for key in entries(self.state):
                self.written_at.setdefault(key, now)
        value = labels(self.state).get(LABEL)
        if value != self.label:
            self.label = value
            projected = value is None or now - self.written_at.get(value, now) >= self.delay
            if projected:
                self.applied.append(value or "")
            else:
                self.restarts += 1


def run_node(state: ClusterStateFile, slicer: TimeSlicer, clock: list[float], pod: DevicePluginPod,
             policy: TimeSlicing, *, seconds: float) -> None:
    """The agent re-planning every 15 s for `seconds`, the kubelet and config-manager watching."""
    end = clock[0] + seconds
    while clock[0] < end:
        slicer.apply(policy, labels(state))
        pod.tick(clock[0])
        clock[0] += 15


@pytest.mark.parametrize("delay", [1.0, 45.0, 90.0])
def test_the_label_never_names_an_entry_the_kubelet_has_not_projected(state: ClusterStateFile, delay: float) -> None:
    clock = [1000.0]
    timed = slicer(state, settle=SETTLE_SECONDS, clock=lambda: clock[0])
    pod = DevicePluginPod(state, delay=delay)
    run_node(state, timed, clock, pod, config((T4, 4)), seconds=300)
    run_node(state, timed, clock, pod, config((T4, 8)), seconds=300)  # a new entry, and the label flips to it
    assert pod.restarts == 0
    assert pod.applied == [entry_for(config(), 4).name, entry_for(config(), 8).name]


def test_without_the_wait_config_manager_would_restart(state: ClusterStateFile) -> None:
    clock = [1000.0]
    pod = DevicePluginPod(state, delay=45.0)
    run_node(state, slicer(state, settle=0, clock=lambda: clock[0]), clock, pod, config((T4, 4)), seconds=120)
    assert pod.restarts == 1, "the race this wait exists for"


def test_the_label_follows_once_the_entry_has_had_time_to_be_projected(state: ClusterStateFile) -> None:
    clock = [1000.0]
    timed = slicer(state, settle=SETTLE_SECONDS, clock=lambda: clock[0])
    entry = entry_for(config(), 4)
    assert timed.apply(config((T4, 4)), labels(state)) is None
    assert entry.name in entries(state) and LABEL not in labels(state)
    clock[0] += SETTLE_SECONDS - 1
    assert timed.apply(config((T4, 4)), labels(state)) is None
    clock[0] += 1
    assert timed.apply(config((T4, 4)), labels(state)) == entry.name == labels(state)[LABEL]


@pytest.mark.parametrize(("written_ago", "flips_at_once"), [(SETTLE_SECONDS + 60, True), (10.0, False)])
def test_an_entry_the_api_server_recorded_long_ago_needs_no_wait(state: ClusterStateFile, written_ago: float,
                                                                 flips_at_once: bool) -> None:
    wall = 1_780_000_000.0
    entry = entry_for(config(), 4)
    stamp = datetime.fromtimestamp(wall - written_ago, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ClusterStateNodes(state).create_config_map({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "gpuguard-time-slicing", "namespace": "gpu-operator",
                     "managedFields": [{"manager": "gpuguard", "operation": "Update", "time": stamp}]},
        "data": {DEFAULT_ENTRY: "version: v1\n", entry.name: entry.text}})
    timed = slicer(state, settle=SETTLE_SECONDS, wall=lambda: wall)
    assert (timed.apply(config((T4, 4)), labels(state)) == entry.name) is flips_at_once
    assert (labels(state).get(LABEL) == entry.name) is flips_at_once


def test_removing_the_label_needs_no_wait(state: ClusterStateFile) -> None:
    slicer(state).apply(config((T4, 4)), labels(state))
    assert slicer(state, settle=SETTLE_SECONDS).apply(config((A10, 4)), labels(state)) is None
    assert LABEL not in labels(state), "config-manager falls back to the default entry, which is already there"

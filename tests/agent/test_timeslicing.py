"""Time-slicing: rule matching, the device plugin ConfigMap entry, the node label, removal, and never editing in place."""

from __future__ import annotations

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

"""The agent's cycle: publish only on change, refresh before readers call it stale, back off on API errors,
re-plan time-slicing when the policy changes, keep going after a bug, and say everything in a dry run."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gpuguard.contracts.node_inventory import ANNOTATION, parse_inventory
from gpuguard.k8s.cluster_state import ClusterStateFile
from gpuguard.k8s.nodes import ClusterStateNodes, NodeApiError
from gpuguard.web.policy_source import PolicySource
from node_agent.app import Agent, once_per_message, open_cluster
from node_agent.backend import Snapshot
from node_agent.fake import FakeBackend
from node_agent.metrics import AgentMetrics
from node_agent.settings import AgentSettings
from node_agent.timeslicing import LABEL, SETTLE_SECONDS, entry_for

from .conftest import ROOT

T4_GPU = "gpus: [{index: 0, uuid: GPU-t4, product: Tesla-T4, name: Tesla T4, memoryMiB: 15360, utilPercent: UTIL}]\n"
START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def replace(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)


class RecordingApi(ClusterStateNodes):
    """The cluster-state API, counting calls and failing the next ones on request."""

    def __init__(self, state: ClusterStateFile) -> None:
        super().__init__(state)
        self.calls: list[str] = []
        self.failures = 0

    def _note(self, call: str) -> None:
        self.calls.append(call)
        if self.failures:
            self.failures -= 1
            raise NodeApiError(call.replace("_", " "), "HTTP 503: the API server is overloaded", status=503)

    def read_node(self, name: str) -> dict[str, Any]:
        self._note("read_node")
        return super().read_node(name)

    def patch_node_metadata(self, name: str, *, labels: Mapping[str, str | None] = {},
                            annotations: Mapping[str, str | None] = {}) -> None:
        self._note("patch_labels" if labels else "patch_annotation")
        super().patch_node_metadata(name, labels=labels, annotations=annotations)

    def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._note("read_config_map")
        return super().read_config_map(namespace, name)


class Harness:
    def __init__(self, tmp_path: Path, *, dry_run: bool = False) -> None:
        self.gpus = tmp_path / "gpus.yaml"
        self.set_util(21)
        self.policy_path = tmp_path / "policy.yaml"
        self.policy_path.write_text((ROOT / "examples" / "policy.yaml").read_text())
        self.state = ClusterStateFile(tmp_path / "cluster.yaml")
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "t4-node", "labels": {"nvidia.com/gpu.product": "Tesla-T4"}}}
        self.state.path.write_text(yaml.safe_dump([node]))
        self.api = RecordingApi(self.state)
        self.now = 1000.0
        self.wall = START
        self.said: list[str] = []
        self.registry = registry = CollectorRegistry()
        self.metrics = AgentMetrics(registry)
        settings = AgentSettings(node_name="t4-node", interval=15, dry_run=dry_run, cluster_state=self.state.path)
        self.agent = Agent(settings, backend=FakeBackend(self.gpus),
                           policy=PolicySource(self.policy_path, registry=registry), api=self.api,
                           metrics=self.metrics, say=self.said.append, clock=lambda: self.now,
                           wall=lambda: self.wall)

    def set_util(self, util: int) -> None:
        replace(self.gpus, T4_GPU.replace("UTIL", str(util)))

    def cycle(self, *, after: float = 15) -> bool:
        self.now += after
        self.wall += timedelta(seconds=after)
        return self.agent.cycle()

    def node(self) -> dict[str, Any]:
        return dict(self.state.load().nodes["t4-node"]["metadata"])

    def calls(self, name: str) -> int:
        return self.api.calls.count(name)


def test_the_first_cycle_publishes_the_inventory_and_applies_time_slicing(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    assert harness.cycle()
    metadata = harness.node()
    inventory = parse_inventory(metadata["annotations"][ANNOTATION])
    assert [(g.uuid, g.product, g.util_percent) for g in inventory.gpus] == [("GPU-t4", "Tesla-T4", 20)]
    entry = entry_for(harness.agent.policy.policy.time_slicing, 4)
    assert entry.name in harness.state.load().config_maps[("gpu-operator", "gpuguard-time-slicing")]["data"]
    assert LABEL not in metadata["labels"], "the label waits until the kubelet can have projected the entry"
    harness.cycle(after=SETTLE_SECONDS)
    assert harness.node()["labels"][LABEL] == entry.name
    assert (harness.registry.get_sample_value("gpuguard_agent_last_report_timestamp_seconds") or 0) > 0
    assert harness.agent.ready


def test_an_unchanged_node_is_neither_patched_nor_read_again_every_cycle(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    for _ in range(3):  # 45 s: inside the node refresh (60 s) and the annotation refresh (metricsMaxAge/2 = 60 s)
        harness.cycle()
    assert harness.calls("patch_annotation") == 1
    assert harness.calls("read_node") == 1
    assert harness.calls("patch_labels") == 0  # the label waits SETTLE_SECONDS for the kubelet


def test_a_change_beyond_rounding_is_published_at_the_next_cycle(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.cycle()
    harness.set_util(23)  # still shown as 20
    harness.cycle()
    harness.set_util(64)
    harness.cycle()
    assert harness.calls("patch_annotation") == 2
    assert parse_inventory(harness.node()["annotations"][ANNOTATION]).gpus[0].util_percent == 65


def test_an_idle_node_is_republished_at_half_the_policy_metrics_max_age(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.cycle()
    stored = parse_inventory(harness.node()["annotations"][ANNOTATION]).ts
    harness.cycle(after=59)
    assert harness.calls("patch_annotation") == 1
    harness.cycle(after=1)
    assert harness.calls("patch_annotation") == 2
    assert parse_inventory(harness.node()["annotations"][ANNOTATION]).ts == stored + timedelta(seconds=60)


def test_api_errors_back_off_exponentially_and_recovery_resets_it(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.api.failures = 3
    attempts = []
    for second in range(0, 181, 15):
        harness.now, harness.wall = 1000.0 + second, START + timedelta(seconds=second)
        calls_before = len(harness.api.calls)
        ok = harness.agent.cycle()
        if len(harness.api.calls) > calls_before:
            attempts.append((second, ok))
    # Fail at 0 (wait 15), at 15 (wait 30), at 45 (wait 60), succeed at 105; then every cycle is healthy again.
    assert attempts[:4] == [(0, False), (15, False), (45, False), (105, True)]
    assert harness.registry.get_sample_value("gpuguard_agent_api_errors_total", {"operation": "read_node"}) == 3
    assert harness.agent.backoff.failures == 0
    assert ANNOTATION in harness.node()["annotations"]


def test_gpus_are_still_read_while_the_api_is_backing_off(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.api.failures = 100
    harness.cycle()
    harness.set_util(90)
    assert not harness.cycle(after=5)  # backing off: no API call at all
    assert harness.agent.inventory is not None and harness.agent.inventory.gpus[0].util_percent == 90


def test_a_policy_change_re_plans_time_slicing_at_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.cycle()
    harness.cycle(after=SETTLE_SECONDS)
    before = harness.node()["labels"][LABEL]
    harness.policy_path.write_text(harness.policy_path.read_text().replace("replicas: 4", "replicas: 8"))
    harness.cycle()  # a changed policy file is taken once it reads the same twice (it may be half-written)
    assert harness.node()["labels"][LABEL] == before
    harness.cycle()  # the new entry is written at once; the label flips once the kubelet can have projected it
    assert harness.node()["labels"][LABEL] == before
    harness.cycle(after=SETTLE_SECONDS)
    assert harness.node()["labels"][LABEL] == entry_for(harness.agent.policy.policy.time_slicing, 8).name
    harness.policy_path.write_text(harness.policy_path.read_text().replace("Tesla-T4", "NVIDIA-L4"))
    harness.cycle()
    harness.cycle()
    assert LABEL not in harness.node()["labels"]


def test_a_dry_run_says_each_change_once_and_writes_nothing(tmp_path: Path) -> None:
    harness = Harness(tmp_path, dry_run=True)
    before = harness.state.path.read_text()
    for _ in range(6):  # 90 s: the node is re-read and time-slicing re-planned once meanwhile
        harness.cycle()
    assert harness.state.path.read_text() == before
    entry = entry_for(harness.agent.policy.policy.time_slicing, 4)
    assert len(harness.said) == 3
    assert harness.said[0].startswith(f"[dry-run] would set annotation {ANNOTATION} on node t4-node: {{")
    assert harness.said[1].startswith(
        f"[dry-run] would create ConfigMap gpu-operator/gpuguard-time-slicing: add entry {entry.name}")
    assert harness.said[2] == f"[dry-run] would set label {LABEL}={entry.name} on node t4-node (was unset)"


def test_without_a_cluster_the_agent_only_serves_metrics_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert open_cluster(AgentSettings(node_name="n")) is None
    assert "serving metrics only" in caplog.text


def test_a_bug_in_one_cycle_costs_that_cycle_not_the_agent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()

    class FlakyBackend:
        reads = 0

        @property
        def name(self) -> str:
            return "flaky"

        def read(self) -> Snapshot:
            self.reads += 1
            if self.reads == 1:
                raise RuntimeError("a bug")
            if self.reads == 3:
                stop.set()
            return Snapshot()

        def close(self) -> None:
            pass

    backend = FlakyBackend()
    registry = CollectorRegistry()
    agent = Agent(AgentSettings(node_name="n", interval=0.001), backend=backend,
                  policy=PolicySource(None, registry=registry), api=None, metrics=AgentMetrics(registry))
    with caplog.at_level(logging.ERROR):
        agent.run(stop)
    assert backend.reads == 3
    assert "agent cycle failed" in caplog.text
    assert agent.ready


def test_a_dry_run_remembers_only_recent_messages() -> None:
    said: list[str] = []
    say = once_per_message(said.append, remember=2)
    for message in ("a", "b", "a", "c", "a", "b"):
        say(message)
    assert said == ["a", "b", "c", "a", "b"]

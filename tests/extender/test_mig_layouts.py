"""`gpuguard mig-layouts` against the in-test API server: the plan it writes, the MIG manager's label protocol
(cordon while pending, uncordon on success, roll back on failed), dry runs and the metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gpuguard.k8s.nodes import KubernetesNodes
from gpuguard.policy.loading import default_policy_text, parse_policy
from gpuguard.policy.migrollout import CHANGED_AT, CONFIG_LABEL, FAILED, PREVIOUS, STATE_LABEL, STUCK, TAINT_KEY
from gpuguard.policy.model import Policy
from scheduler_ext.miglayouts import LayoutMetrics, run_round
from tests.agent.apiserver import FakeApiServer
from tests.conftest import ROOT

H100 = "NVIDIA-H100-80GB-HBM3"
POOL = "gpuguard.io/mig-pool"
DYNAMIC = """
dynamicMig:
  enabled: true
  pools:
    - {name: serving, layouts: [all-1g.10gb, all-3g.40gb, all-balanced], cooldown: 10m}
"""


def policy(extra: str = DYNAMIC) -> Policy:
    return parse_policy(default_policy_text() + extra)


def mig_node(name: str, config: str, allocatable: dict[str, int], *, state: str = "success") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "resourceVersion": "1", "labels": {
            "nvidia.com/gpu.product": H100, "nvidia.com/gpu.count": "8", "nvidia.com/mig.strategy": "mixed",
            POOL: "serving", CONFIG_LABEL: config, STATE_LABEL: state}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {"allocatable": {f"nvidia.com/mig-{p}": str(n) for p, n in allocatable.items()}},
    }


def pod(name: str, profile: str, *, node: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running" if node else "Pending"}
    if not node:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/1 nodes are available"}]
    spec: dict[str, Any] = {"containers": [{"name": "kserve-container", "resources": {
        "limits": {f"nvidia.com/mig-{profile}": "1"}}}], "nodeSelector": {"nvidia.com/gpu.product": H100}}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "models"}, "spec": spec,
            "status": status}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeApiServer, KubernetesNodes]]:
    objects = [mig_node("gpu-a", "all-1g.10gb", {"1g.10gb": 56}), *(pod(f"big-{i}", "3g.40gb") for i in range(3))]
    with FakeApiServer(objects) as server:
        yield server, KubernetesNodes.connect(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig"))


def labels(server: FakeApiServer, node: str = "gpu-a") -> dict[str, str]:
    return dict(server.nodes[node]["metadata"].get("labels") or {})


def annotations(server: FakeApiServer, node: str = "gpu-a") -> dict[str, str]:
    return dict(server.nodes[node]["metadata"].get("annotations") or {})


def our_taints(server: FakeApiServer, node: str = "gpu-a") -> list[dict[str, Any]]:
    return [t for t in server.nodes[node]["spec"].get("taints") or [] if t["key"] == TAINT_KEY]


def mig_manager_reports(server: FakeApiServer, state: str, node: str = "gpu-a") -> None:
    server.nodes[node]["metadata"]["labels"][STATE_LABEL] = state


def changes(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("gpuguard_mig_layout_changes_total", {"outcome": outcome}) or 0.0


def test_waiting_pods_move_an_idle_node_and_it_stays_cordoned_until_the_mig_manager_succeeds(cluster: Any) -> None:
    server, api = cluster
    registry = CollectorRegistry()
    metrics = LayoutMetrics(registry)
    result = run_round(api, policy(), now=1000.0, metrics=metrics)
    assert [m.to_config for m in result.plan.moves] == ["all-3g.40gb"]
    assert labels(server)[CONFIG_LABEL] == "all-3g.40gb" and STATE_LABEL not in labels(server)
    assert our_taints(server) == [{"key": TAINT_KEY, "value": "all-3g.40gb", "effect": "NoSchedule"}]
    assert any(t["key"] == "nvidia.com/gpu" for t in server.nodes["gpu-a"]["spec"]["taints"]), "others kept"
    assert annotations(server)[PREVIOUS] == "all-1g.10gb" and annotations(server)[CHANGED_AT] == "1000"
    patch = server.writes()[-1]
    assert patch.method == "PATCH" and patch.content_type == "application/merge-patch+json"
    assert patch.body["metadata"]["resourceVersion"] == "1"
    assert changes(registry, "made") == 1
    assert registry.get_sample_value("gpuguard_mig_nodes", {"pool": "serving", "layout": "all-3g.40gb"}) == 1

    for state in ("pending", "rebooting"):
        mig_manager_reports(server, state)
        writes = len(server.writes())
        assert run_round(api, policy(), now=1030.0, metrics=metrics).plan.moves == ()
        assert our_taints(server) and len(server.writes()) == writes, "cordoned, nothing else to write"

    mig_manager_reports(server, "success")
    run_round(api, policy(), now=1100.0, metrics=metrics)
    assert our_taints(server) == [] and PREVIOUS not in annotations(server)
    assert labels(server)[CONFIG_LABEL] == "all-3g.40gb"
    assert changes(registry, "applied") == 1 and changes(registry, "failed") == 0


def test_a_failed_change_is_rolled_back_counted_and_uncordoned_once_the_old_layout_is_back(cluster: Any) -> None:
    server, api = cluster
    registry = CollectorRegistry()
    metrics = LayoutMetrics(registry)
    run_round(api, policy(), now=1000.0, metrics=metrics)
    mig_manager_reports(server, "failed")
    run_round(api, policy(), now=1030.0, metrics=metrics)
    assert labels(server)[CONFIG_LABEL] == "all-1g.10gb" and STATE_LABEL not in labels(server)
    assert annotations(server)[FAILED] == "all-3g.40gb" and our_taints(server)
    assert changes(registry, "failed") == 1
    mig_manager_reports(server, "pending")
    run_round(api, policy(), now=1060.0, metrics=metrics)
    assert our_taints(server), "still cordoned while the MIG manager restores the old layout"
    mig_manager_reports(server, "success")
    run_round(api, policy(), now=1090.0, metrics=metrics)
    assert our_taints(server) == [] and FAILED not in annotations(server)
    assert changes(registry, "rolled-back") == 1


def test_a_failed_rollback_leaves_the_node_cordoned_and_alone(cluster: Any) -> None:
    server, api = cluster
    run_round(api, policy(), now=1000.0)
    mig_manager_reports(server, "failed")
    run_round(api, policy(), now=1030.0)
    mig_manager_reports(server, "failed")
    run_round(api, policy(), now=1060.0)
    assert annotations(server)[STUCK] == "all-3g.40gb" and our_taints(server)
    writes = len(server.writes())
    run_round(api, policy(), now=5000.0)
    assert len(server.writes()) == writes


def test_a_node_in_its_cool_down_is_not_changed_again(cluster: Any) -> None:
    server, api = cluster
    run_round(api, policy(), now=1000.0)
    mig_manager_reports(server, "success")
    server.nodes["gpu-a"]["status"]["allocatable"] = {"nvidia.com/mig-3g.40gb": "16"}
    run_round(api, policy(), now=1030.0)
    server.pods = [pod(f"small-{i}", "1g.10gb") for i in range(20)]
    result = run_round(api, policy(), now=1100.0)
    assert result.plan.moves == () and "cool-down" in dict(result.plan.held_back)["gpu-a"]
    assert run_round(api, policy(), now=1700.0).plan.moves != ()


def test_a_gpu_holding_a_pod_keeps_the_node_in_its_layout(cluster: Any) -> None:
    server, api = cluster
    server.pods.append(pod("small", "1g.10gb", node="gpu-a"))
    result = run_round(api, policy(), now=1000.0)
    assert result.plan.moves == () and labels(server)[CONFIG_LABEL] == "all-1g.10gb" and not server.writes()


def test_a_dry_run_plans_and_writes_nothing(cluster: Any) -> None:
    server, api = cluster
    result = run_round(api, policy(), now=1000.0, dry_run=True)
    assert [m.to_config for m in result.plan.moves] == ["all-3g.40gb"] and not server.writes()


def test_the_command_prints_the_plan_in_a_dry_run_and_does_nothing_when_disabled(cluster: Any,
                                                                                   tmp_path: Path) -> None:
    server, _ = cluster
    kubeconfig = server.write_kubeconfig(tmp_path / "k")
    on, off = tmp_path / "on.yaml", tmp_path / "off.yaml"
    on.write_text(default_policy_text() + DYNAMIC)
    off.write_text(default_policy_text())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "gpuguard", "mig-layouts", "--kubeconfig", str(kubeconfig), "--once"]
    dry = subprocess.run([*base, "--policy", str(on), "--dry-run"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "gpu-a (serving): all-1g.10gb -> all-3g.40gb" in dry.stdout and not server.writes()
    idle = subprocess.run([*base, "--policy", str(off)], capture_output=True, text=True, env=env, timeout=60)
    assert idle.returncode == 0 and "dynamicMig.enabled is false" in idle.stdout and not server.writes()


def test_a_pool_layout_the_mig_manager_does_not_know_is_refused_with_the_field_and_a_suggestion() -> None:
    with pytest.raises(Exception, match=r"pools\[0\] \(serving\): layout 'all-3g.40gbb'.*did you mean all-3g.40gb"):
        policy(DYNAMIC.replace("all-3g.40gb,", "all-3g.40gbb,"))


def test_a_failed_change_with_no_layout_to_go_back_to_stays_cordoned_for_an_admin(cluster: Any) -> None:
    server, api = cluster
    del server.nodes["gpu-a"]["metadata"]["labels"][CONFIG_LABEL]
    registry = CollectorRegistry()
    metrics = LayoutMetrics(registry)
    run_round(api, policy(), now=1000.0, metrics=metrics)
    assert annotations(server)[PREVIOUS] == ""
    mig_manager_reports(server, "failed")
    run_round(api, policy(), now=1030.0, metrics=metrics)
    assert annotations(server)[STUCK] == "all-3g.40gb" and our_taints(server)
    assert changes(registry, "failed") == 1

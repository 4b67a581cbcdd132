"""The webhook's placement and the extender's filter agree on shared GPU nodes.

Pods come out of /mutate under the default policy and go to the extender's filter with full Node objects, as
kube-scheduler would send them: a whole-GPU pod is refused on a time-sliced or MPS node (no preemption can change
that, so the node is unresolvable), and a time-sliced pod pinned to a product lands on the node whose product GPU
Feature Discovery renamed `<product>-SHARED`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from gpuguard.contracts.extender import parse_args
from gpuguard.policy.model import Policy
from scheduler_ext.extender import decide_filter
from scheduler_ext.inventory.nodes import node_facts
from tests.conftest import admission_request, patched, policy_with, with_object
from tests.extender.conftest import INVENTORY_TIME, cluster_node
from webhook.review import mutate


def admitted_pod(policy: Policy, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"].update(annotations or {})
    request = with_object(request, pod)
    return patched(request, mutate(request, policy).response)


def relabelled(name: str, labels: dict[str, str]) -> dict[str, Any]:
    node = copy.deepcopy(cluster_node(name))
    node["metadata"]["labels"].update(labels)
    return node


def filtered(pod: dict[str, Any], nodes: list[dict[str, Any]], policy: Policy) -> Any:
    args = parse_args(json.dumps({"Pod": pod, "Nodes": {"items": nodes}, "NodeNames": None}, separators=(",", ":")))
    states = [node_facts(n).state for n in nodes]
    return decide_filter(args, states, utilization={}, scheduling=policy.scheduling, now=INVENTORY_TIME).result


def test_a_whole_gpu_pod_is_refused_on_the_time_sliced_node_and_preemption_is_not_tried(policy: Policy) -> None:
    pod = admitted_pod(policy)
    mps = relabelled("gpu-a100-1", {"nvidia.com/gpu.sharing-strategy": "mps"})
    result = filtered(pod, [cluster_node("gpu-a100-0"), cluster_node("gpu-t4-shared"), mps], policy)
    assert [n["metadata"]["name"] for n in result.nodes.items] == ["gpu-a100-0"]
    assert set(result.failed_and_unresolvable_nodes) == {"gpu-t4-shared", "gpu-a100-1"}
    assert "the pod needs GPUs of its own" in result.failed_and_unresolvable_nodes["gpu-t4-shared"]
    assert result.failed_nodes == {}


def test_a_time_sliced_pod_pinned_to_a_product_lands_on_its_shared_name() -> None:
    policy = policy_with(userOverrides=["sharing", "gpu-product"])
    pod = admitted_pod(policy, {"gpuguard.io/sharing": "time-slicing", "gpuguard.io/gpu-product": "Tesla-T4"})
    renamed = relabelled("gpu-t4-shared", {"nvidia.com/gpu.product": "Tesla-T4-SHARED"})
    other = relabelled("gpu-a100-0", {"nvidia.com/gpu.sharing-strategy": "time-slicing"})
    result = filtered(pod, [renamed, other], policy)
    assert [n["metadata"]["name"] for n in result.nodes.items] == ["gpu-t4-shared"]
    assert "gpu-a100-0" in result.failed_and_unresolvable_nodes

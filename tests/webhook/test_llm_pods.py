"""LLMInferenceService workload pods and multi-node InferenceService pods through /mutate and /validate."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from gpuguard.contracts.admission import decode_patch
from gpuguard.policy.model import Policy
from gpuguard.policy.workload import group_of, workload_of
from tests.conftest import admission_request, patched, policy_with, with_object
from webhook.review import mutate, validate

LLM_PODS = {
    # fixture: (kind, node role, llm-d role, model container)
    "review-llmisvc-decode.json": ("LLMInferenceService", "single", "decode", "main"),
    "review-llmisvc-prefill.json": ("LLMInferenceService", "single", "prefill", "main"),
    "review-llmisvc-leader.json": ("LLMInferenceService", "leader", "decode", "main"),
    "review-llmisvc-worker.json": ("LLMInferenceService", "worker", "decode", "main"),
    "review-isvc-multinode-head.json": ("InferenceService", "leader", "", "kserve-container"),
    "review-isvc-multinode-worker.json": ("InferenceService", "worker", "", "worker-container"),
}
ROLE_RULES = [
    {"name": "prefill", "match": {"roles": ["prefill"]}, "gpu": {"count": 2}},
    {"name": "decode", "match": {"kinds": ["LLMInferenceService"], "roles": ["decode", "both"]}, "gpu": {"count": 2}},
]


def stored(name: str, policy: Policy) -> dict[str, Any]:
    request = admission_request(name)
    return patched(request, mutate(request, policy).response)


def verdict_of(pod: dict[str, Any], name: str, policy: Policy) -> Any:
    return validate(with_object(admission_request(name), pod), policy)


def gpu_containers(pod: dict[str, Any]) -> list[str]:
    every = pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
    return [c["name"] for c in every if any(k.startswith("nvidia.com/") for k in (c.get("resources") or {}).get("limits", {}))]


@pytest.mark.parametrize("name", sorted(LLM_PODS))
def test_each_llm_serving_pod_is_recognised_with_its_kind_and_roles(name: str) -> None:
    kind, node_role, role, _ = LLM_PODS[name]
    found = workload_of(admission_request(name).object or {})
    assert found is not None
    assert (found.kind, found.node_role, found.role) == (kind, node_role, role)


@pytest.mark.parametrize("name", sorted(LLM_PODS))
@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_patched_llm_pod_is_schema_valid(name: str, version: str, policy: Policy) -> None:
    kubernetes_validate.validate(stored(name, policy_with(rules=ROLE_RULES)), version, strict=True)


@pytest.mark.parametrize("name", sorted(LLM_PODS))
def test_only_the_model_container_holds_a_gpu_never_the_routing_sidecar_or_init_containers(
    name: str, policy: Policy
) -> None:
    pod = stored(name, policy_with(rules=ROLE_RULES))
    assert gpu_containers(pod) == [LLM_PODS[name][3]]
    assert "gpuguard.io/applied" in pod["metadata"]["annotations"]


@pytest.mark.parametrize("name", sorted(LLM_PODS))
def test_admitting_a_mutated_llm_pod_again_changes_nothing(name: str) -> None:
    policy = policy_with(rules=ROLE_RULES)
    request = admission_request(name)
    once = patched(request, mutate(request, policy).response)
    assert decode_patch(mutate(with_object(request, once), policy).response) == []


def test_a_decode_pod_without_gpus_gets_the_count_of_the_rule_for_its_role() -> None:
    pod = stored("review-llmisvc-decode.json", policy_with(rules=ROLE_RULES))
    main = pod["spec"]["containers"][0]
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "decode"
    assert verdict_of(pod, "review-llmisvc-decode.json", policy_with(rules=ROLE_RULES)).decision == "allowed"


def test_prefill_and_decode_rules_match_their_own_role_only() -> None:
    rules = [{"name": "prefill-a100", "match": {"roles": ["prefill"]},
              "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}, *ROLE_RULES[1:]]
    policy = policy_with(rules=rules)
    prefill = stored("review-llmisvc-prefill.json", policy)
    decode = stored("review-llmisvc-decode.json", policy)
    assert prefill["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert prefill["metadata"]["annotations"]["gpuguard.io/applied"] == "prefill-a100"
    assert decode["metadata"]["annotations"]["gpuguard.io/applied"] == "decode"


@pytest.mark.parametrize(("node_roles", "matched"), [
    (["worker"], {"review-llmisvc-worker.json", "review-isvc-multinode-worker.json"}),
    (["leader"], {"review-llmisvc-leader.json", "review-isvc-multinode-head.json"}),
    (["single"], {"review-llmisvc-decode.json", "review-llmisvc-prefill.json"}),
])
def test_node_role_rules_match_leaders_workers_or_single_pods(node_roles: list[str], matched: set[str]) -> None:
    policy = policy_with(rules=[{"name": "picked", "match": {"nodeRoles": node_roles}, "tolerations": []}])
    applied = {n for n in LLM_PODS if stored(n, policy)["metadata"]["annotations"]["gpuguard.io/applied"] == "picked"}
    assert applied == matched


def test_a_kind_rule_never_matches_the_other_kind() -> None:
    policy = policy_with(rules=[{"name": "llmisvc-only", "match": {"kinds": ["LLMInferenceService"]}}])
    assert stored("review-isvc-multinode-head.json", policy)["metadata"]["annotations"]["gpuguard.io/applied"] != \
        "llmisvc-only"
    assert stored("review-standard-vllm.json", policy)["metadata"]["annotations"]["gpuguard.io/applied"] != \
        "llmisvc-only"
    assert stored("review-llmisvc-worker.json", policy)["metadata"]["annotations"]["gpuguard.io/applied"] == \
        "llmisvc-only"


def test_a_role_rule_never_matches_inferenceservice_pods() -> None:
    policy = policy_with(rules=[{"name": "decoders", "match": {"roles": ["decode"]}}])
    pod = stored("review-standard-vllm.json", policy)
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] != "decoders"


def test_a_model_server_started_with_more_ranks_than_gpus_is_refused_with_the_fix(policy: Policy) -> None:
    pod = stored("review-llmisvc-decode.json", policy)  # the default policy gives one GPU; vLLM starts two ranks
    outcome = verdict_of(pod, "review-llmisvc-decode.json", policy)
    assert outcome.decision == "denied"
    message = outcome.response.status.message
    assert "container 'main'" in message and "--tensor-parallel-size 2" in message
    assert "nvidia.com/gpu: 2" in message


@pytest.mark.parametrize("name", ["review-llmisvc-leader.json", "review-llmisvc-worker.json",
                                  "review-isvc-multinode-worker.json"])
@pytest.mark.parametrize("resource", ["nvidia.com/mig-3g.40gb", "nvidia.com/gpu.shared"])
def test_a_pod_of_a_multi_node_group_without_whole_gpus_is_refused(name: str, resource: str, policy: Policy) -> None:
    pod = copy.deepcopy(admission_request(name).object)
    assert pod is not None
    resources = pod["spec"]["containers"][0]["resources"]
    for section in ("limits", "requests"):
        del resources[section]["nvidia.com/gpu"]
        resources[section][resource] = "1"
    outcome = verdict_of(pod, name, policy)
    assert outcome.decision == "denied"
    assert "multi-node group" in outcome.response.status.message
    assert "whole GPUs" in outcome.response.status.message


def test_a_single_node_pod_may_still_use_a_mig_slice(policy: Policy) -> None:
    pod = copy.deepcopy(admission_request("review-llmisvc-prefill.json").object)
    assert pod is not None
    main = pod["spec"]["containers"][0]
    main["args"] = ["--port", "8000"]
    for section in ("limits", "requests"):
        del main["resources"][section]["nvidia.com/gpu"]
        main["resources"][section]["nvidia.com/mig-3g.40gb"] = "1"
    assert verdict_of(pod, "review-llmisvc-prefill.json", policy).decision == "allowed"


def test_pods_of_other_llm_components_are_left_alone(policy: Policy) -> None:
    pod = copy.deepcopy(admission_request("review-llmisvc-decode.json").object)
    assert pod is not None
    pod["metadata"]["labels"]["app.kubernetes.io/component"] = "llminferenceservice-router-scheduler"
    outcome = mutate(with_object(admission_request("review-llmisvc-decode.json"), pod), policy)
    assert outcome.decision == "ignored" and outcome.response.patch is None


def test_a_kai_managed_group_pod_is_left_to_kai_when_policy_says_device_access_only() -> None:
    pod = copy.deepcopy(admission_request("review-llmisvc-worker.json").object)
    assert pod is not None
    pod["metadata"]["annotations"]["gpu-fraction"] = "0.5"
    pod["metadata"]["labels"]["kai.scheduler/queue"] = "llm"
    counted = verdict_of(pod, "review-llmisvc-worker.json", policy_with())
    assert counted.decision == "denied" and "KAI-Scheduler GPU fraction" in counted.response.status.message
    left = policy_with(externallyManaged={"validation": "deviceAccess"})
    assert verdict_of(pod, "review-llmisvc-worker.json", left).decision == "allowed"


def test_the_pods_of_one_serving_group_share_a_group_and_other_pods_have_none() -> None:
    def group(name: str, namespace: str = "llm-prod") -> str:
        pod = copy.deepcopy(admission_request(name).object)
        assert pod is not None
        pod["metadata"]["namespace"] = namespace
        return group_of(pod)
    assert group("review-llmisvc-leader.json") == group("review-llmisvc-worker.json") != ""
    assert group("review-isvc-multinode-head.json") == group("review-isvc-multinode-worker.json") == \
        "llm-prod/isvc/llama-70b"
    assert group("review-llmisvc-leader.json", "other") != group("review-llmisvc-worker.json")
    assert group("review-llmisvc-decode.json") == group("review-standard-vllm.json") == ""

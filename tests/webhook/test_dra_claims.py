"""`allocation: dra`: the GPU as a ResourceClaim from gpuguard's templates, in /mutate and /validate."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions

from gpuguard.contracts.admission import decode_patch
from gpuguard.policy.claim_templates import GpuShape, claim_spec, templates_for, template_name
from gpuguard.policy.loading import default_policy
from gpuguard.policy.model import Dra, Policy
from gpuguard.policy.resolve import resolve
from gpuguard.policy.validation import pod_problems
from tests.conftest import admission_request, patched, policy_with, with_object
from webhook.review import mutate, validate

DRA_VERSIONS = sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 34)},
                      key=lambda v: tuple(map(int, v.split("."))))
"""Every Kubernetes version kubernetes-validate ships from 1.34 (resource.k8s.io/v1 GA) to the newest."""
CASES = {
    "review-standard-vllm.json": "llm-prod",  # the llm rule: one H100
    "review-knative-small-model.json": "models",  # small-models-on-mig: one 1g.10gb
    "review-knative-triton.json": "models",  # the defaults: one GPU
}


def dra_policy(**changes: Any) -> Policy:
    base = default_policy().model_dump(by_alias=True, exclude_none=True, mode="json")
    base["defaults"]["allocation"] = "dra"
    base.update(changes)
    return policy_with(**{k: v for k, v in base.items() if k in ("defaults", *changes)})


@pytest.fixture(scope="module")
def dra() -> Policy:
    return dra_policy()


def mutated(name: str, policy: Policy) -> dict[str, Any]:
    request = admission_request(name)
    return patched(request, mutate(request, policy).response)


def model(pod: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == "kserve-container")
    return found


def test_the_gpu_becomes_a_claim_on_the_model_container_only(dra: Policy) -> None:
    pod = mutated("review-standard-vllm.json", dra)
    (entry,) = pod["spec"]["resourceClaims"]
    assert entry["name"] == "gpu" and entry["resourceClaimTemplateName"].startswith("gpuguard-gpu-1-h100-80gb-hbm3-")
    assert model(pod)["resources"]["claims"] == [{"name": "gpu"}]
    for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        resources = container.get("resources") or {}
        assert not any(k.startswith("nvidia.com/") for k in {**resources.get("limits", {}),
                                                             **resources.get("requests", {})}), container["name"]
        if container["name"] != "kserve-container":
            assert "claims" not in resources
    names = {t["metadata"]["name"] for t in templates_for(dra, "llm-prod")}
    assert entry["resourceClaimTemplateName"] in names


def test_placement_stays_but_the_product_moves_into_the_claim(dra: Policy) -> None:
    pod = mutated("review-standard-vllm.json", dra)
    assert pod["spec"]["schedulerName"] == "gpuguard-scheduler"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert "nodeSelector" not in pod["spec"]  # the llm rule's only selector is its product, now in the claim
    assert "affinity" not in pod["spec"]  # the sharing-strategy label is the device plugin's
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "llm"
    assert mutated("review-knative-triton.json", dra)["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_a_mig_rule_becomes_a_claim_on_the_mig_class(dra: Policy) -> None:
    pod = mutated("review-knative-small-model.json", dra)
    (entry,) = pod["spec"]["resourceClaims"]
    spec = claim_spec(GpuShape(profile="1g.10gb"), dra.dra)
    assert entry["resourceClaimTemplateName"] == template_name(GpuShape(profile="1g.10gb"), dra.dra)
    (request,) = spec["devices"]["requests"]
    assert request["exactly"]["deviceClassName"] == "mig.nvidia.com"
    assert request["exactly"]["selectors"] == [
        {"cel": {"expression": "device.attributes['gpu.nvidia.com'].profile == '1g.10gb'"}}]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("version", DRA_VERSIONS)
def test_every_patched_pod_and_template_is_schema_valid(name: str, version: str, dra: Policy) -> None:
    kubernetes_validate.validate(mutated(name, dra), version, strict=True)
    for template in templates_for(dra, CASES[name]):
        kubernetes_validate.validate(template, version, strict=True)


@pytest.mark.parametrize("name", CASES)
def test_admitting_the_claimed_pod_again_changes_nothing_and_validation_admits_it(name: str, dra: Policy) -> None:
    request = admission_request(name)
    once = patched(request, mutate(request, dra).response)
    again = mutate(with_object(request, once), dra)
    assert decode_patch(again.response) == []
    assert validate(with_object(request, once), dra).decision == "allowed"


def test_a_pod_that_already_has_a_claim_is_never_given_another(dra: Policy) -> None:
    request = admission_request("review-knative-triton.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["resourceClaims"] = [{"name": "mine", "resourceClaimTemplateName": "team-gpu"}]
    model(pod).setdefault("resources", {})["claims"] = [{"name": "mine"}]
    stored = patched(with_object(request, pod), mutate(with_object(request, pod), dra).response)
    assert stored["spec"]["resourceClaims"] == pod["spec"]["resourceClaims"]
    assert stored["metadata"]["annotations"]["gpuguard.io/applied"] == "stepped-aside: dra"


def test_a_rule_or_namespace_chooses_the_allocation_mode() -> None:
    policy = policy_with(namespaces={"dra-pool-*": {"allocation": "dra"}},
                         rules=[{"name": "plugin", "match": {"labels": {"pool": "plugin"}}, "allocation": "devicePlugin"}])
    args = {"runtime": "triton", "annotations": {}}
    assert resolve(policy, namespace="dra-pool-a", labels={}, **args).allocation == "dra"  # type: ignore[arg-type]
    assert resolve(policy, namespace="dra-pool-a", labels={"pool": "plugin"},
                   **args).allocation == "devicePlugin"  # type: ignore[arg-type]
    assert resolve(policy, namespace="models", labels={}, **args).allocation == "devicePlugin"  # type: ignore[arg-type]


def test_the_device_plugin_default_is_unchanged(policy: Policy) -> None:
    pod = mutated("review-standard-vllm.json", policy)
    assert "resourceClaims" not in pod["spec"] and model(pod)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_time_slicing_has_no_claim_form_and_says_so() -> None:
    base = default_policy().model_dump(by_alias=True, exclude_none=True, mode="json")["defaults"]
    policy = policy_with(defaults={**base, "allocation": "dra", "gpu": {"sharing": "timeSlicing"}})
    request = admission_request("review-knative-triton.json")
    outcome = mutate(request, policy)
    assert "resourceClaims" not in patched(request, outcome.response)["spec"]
    assert any("time-slicing has no per-pod DRA claim form" in w for w in outcome.response.warnings or [])
    alone = policy_with(defaults={**base, "allocation": "dra", "gpu": {"sharing": "timeSlicing"}}, rules=[],
                        userOverrides=[])
    assert templates_for(alone, "models") == []


# ------------------------------------------------------------------------------------------------------- validation


def test_claims_count_against_the_gpu_limit_with_the_other_channels() -> None:
    base = default_policy().model_dump(by_alias=True, exclude_none=True, mode="json")["defaults"]
    policy = policy_with(defaults={**base, "allocation": "dra", "gpu": {"count": 2}},
                         namespaces={"models": {"limits": {"maxGpusPerPod": 2}}})
    request = admission_request("review-knative-triton.json")
    pod = patched(request, mutate(request, policy).response)
    assert validate(with_object(request, pod), policy).decision == "allowed"
    model(pod)["resources"].setdefault("limits", {})["nvidia.com/gpu"] = "1"
    outcome = validate(with_object(request, pod), policy)
    assert outcome.decision == "denied"
    message = outcome.response.status.message if outcome.response.status else ""
    assert "asks for 3 GPUs in all" in message and "through claim 'gpu'" in message


def test_whole_gpus_and_a_mig_claim_are_never_mixed(dra: Policy) -> None:
    request = admission_request("review-knative-small-model.json")
    pod = patched(request, mutate(request, dra).response)
    model(pod)["resources"].setdefault("limits", {})["nvidia.com/gpu"] = "1"
    outcome = validate(with_object(request, pod), dra)
    message = outcome.response.status.message if outcome.response.status else ""
    assert outcome.decision == "denied" and "whole GPUs (nvidia.com/gpu) and MIG devices" in message


def test_a_claim_profile_the_namespace_does_not_allow_is_refused_and_sharing_too() -> None:
    policy = policy_with(namespaces={"models": {"limits": {"allowedMigProfiles": ["2g.20gb"],
                                                           "allowTimeSlicing": False}}})
    effective = resolve(policy, namespace="models", runtime="triton", labels={}, annotations={})
    mig = claim_spec(GpuShape(profile="1g.10gb"), Dra())
    shared = {"devices": {**claim_spec(GpuShape(count=1), Dra())["devices"], "config": [{"opaque": {
        "driver": "gpu.nvidia.com", "parameters": {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig",
                                                   "sharing": {"strategy": "TimeSlicing"}}}}]}}
    pod = {"spec": {"containers": [{"name": "kserve-container", "resources": {"claims": [{"name": "a"}, {"name": "b"}]}}],
                    "resourceClaims": [{"name": "a", "resourceClaimTemplateName": "small"},
                                       {"name": "b", "resourceClaimTemplateName": "shared"}]}}
    problems = [str(p) for p in pod_problems(pod, effective, templates={"small": mig, "shared": shared})]
    assert any(p.startswith("claim 'a': MIG profile '1g.10gb'") for p in problems), problems
    assert any(p.startswith("claim 'b': shares its GPU (TimeSlicing)") for p in problems), problems
    assert pod_problems(pod, effective, templates={}) == []  # unknown templates are their makers' business

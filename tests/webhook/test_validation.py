"""What /validate refuses, how it says so, and how the namespace's mode changes the answer."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpuguard.policy.model import Policy
from tests.conftest import admission_request, patched, policy_with, with_object
from webhook.review import mutate, validate


def predictor_with(resources: dict[str, Any], *, security: dict[str, Any] | None = None,
                   selector: dict[str, str] | None = None, namespace: str = "models") -> Any:
    """The canonical custom predictor pod, mutated as kube-apiserver would before validating it."""
    request = admission_request("review-standard-custom.json", namespace=namespace)
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["containers"][0]["resources"] = resources
    if security is not None:
        pod["spec"]["containers"][0]["securityContext"] = security
    if selector is not None:
        pod["spec"]["nodeSelector"] = selector
    request = with_object(request, pod)
    return with_object(request, patched(request, mutate(request, _default_policy()).response))


def _default_policy() -> Policy:
    from gpuguard.policy.loading import default_policy

    return default_policy()


# (resources, security context, node selector, fragments the denial message must contain)
VIOLATIONS = [
    pytest.param({"limits": {"nvidia.com/gpu": "0.5"}}, None, None,
                 ["'kserve-container'", "'0.5'", "not a whole number", "Fix:", "nvidia.com/mig-1g.10gb"], id="fractional"),
    pytest.param({"limits": {"nvidia.com/gpu": "500m"}}, None, None, ["'500m'", "not a whole number"], id="milli"),
    pytest.param({"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "1"}}, None, None,
                 ["request '1' differs from its limit '2'", "make the request equal"], id="request-differs"),
    pytest.param({"limits": {"nvidia.com/gpu": "6"}}, None, None,
                 ["6 GPUs in all (6 nvidia.com/gpu)", "limit is 4", "at most 4"], id="too-many"),
    pytest.param({"limits": {"nvidia.com/mig-1g.5gb": "1"}}, None, None,
                 ["'1g.5gb'", "not allowed", "nvidia.com/mig-1g.10gb"], id="mig-not-allowed"),
    pytest.param({"limits": {"nvidia.com/mig-1g.11gb": "1"}}, None, None,
                 ["unknown MIG profile '1g.11gb'", "known profiles"], id="mig-unknown"),
    pytest.param({"limits": {"nvidia.com/mig-3g.40gb": "1"}}, None, {"nvidia.com/gpu.product": "NVIDIA-H200"},
                 ["nvidia.com/mig-3g.40gb does not exist on NVIDIA-H200", "3g.71gb"], id="mig-wrong-product"),
    pytest.param({"limits": {"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "1"}}, None, None,
                 ["whole GPUs (nvidia.com/gpu) and MIG devices", "one kind only"], id="whole-and-mig"),
    pytest.param({"limits": {"nvidia.com/gpu": "1"}}, {"privileged": True}, None,
                 ["privileged", "sees every GPU", "remove securityContext.privileged"], id="privileged"),
]


@pytest.mark.parametrize(("resources", "security", "selector", "fragments"), VIOLATIONS)
def test_violations_are_denied_naming_container_value_and_fix(
    resources: dict[str, Any], security: dict[str, Any] | None, selector: dict[str, str] | None,
    fragments: list[str], policy: Policy,
) -> None:
    outcome = validate(predictor_with(resources, security=security, selector=selector), policy)
    assert outcome.decision == "denied"
    assert outcome.response.allowed is False
    assert outcome.response.status is not None and outcome.response.status.code == 403
    message = outcome.response.status.message
    assert message.startswith("gpuguard denied Pod models/fraud-scorer-predictor-2c3a4f5e6d-*: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "resources",
    [{"limits": {"nvidia.com/gpu": "1"}}, {"limits": {"nvidia.com/gpu": "1000m"}, "requests": {"nvidia.com/gpu": "1"}},
     {"limits": {"nvidia.com/mig-2g.20gb": 1}}, {}],
)
def test_good_requests_are_allowed(resources: dict[str, Any], policy: Policy) -> None:
    outcome = validate(predictor_with(resources), policy)
    assert outcome.response.allowed, outcome.response.status
    assert outcome.decision == "allowed"


def test_time_slicing_is_refused_where_the_namespace_does_not_allow_it() -> None:
    policy = policy_with(namespaces={"models": {"limits": {"allowTimeSlicing": False}}})
    request = admission_request("review-standard-custom.json", namespace="models")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"]["gpuguard.io/sharing"] = "time-slicing"
    outcome = validate(with_object(request, pod), policy)
    assert outcome.decision == "denied"
    assert outcome.response.status is not None
    assert "time-sliced GPU" in outcome.response.status.message


def test_a_shared_gpu_resource_is_refused_where_time_slicing_is_off() -> None:
    policy = policy_with(limits={"allowTimeSlicing": False, "maxGpusPerPod": 4})
    request = predictor_with({"limits": {"nvidia.com/gpu.shared": "1"}})
    outcome = validate(request, policy)
    assert outcome.decision == "denied"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("two", "'two' is not a whole number of GPUs"), ("9", "9 GPUs exceeds the limit of 4"),
     ("0", "'0' is not a whole number of GPUs")],
)
def test_bad_gpu_count_annotations_are_refused(value: str, fragment: str, policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"]["gpuguard.io/gpu-count"] = value
    outcome = validate(with_object(request, pod), policy)
    assert outcome.response.status is not None
    assert fragment in outcome.response.status.message
    assert "annotation gpuguard.io/gpu-count" in outcome.response.status.message


def test_conflicting_gpu_annotations_are_refused(policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"].update({"gpuguard.io/gpu-count": "1", "gpuguard.io/mig-profile": "1g.10gb"})
    outcome = validate(with_object(request, pod), policy)
    assert outcome.response.status is not None
    assert "set only one of them" in outcome.response.status.message


def test_warn_mode_admits_with_one_warning_per_violation(policy: Policy) -> None:
    request = predictor_with({"limits": {"nvidia.com/gpu": "0.5", "nvidia.com/mig-1g.5gb": "1"}},
                             namespace="sandbox-alice")
    outcome = validate(request, policy)
    assert outcome.decision == "warned"
    assert outcome.response.allowed
    warnings = outcome.response.warnings or ()
    assert len(warnings) == 3
    assert all(w.startswith("gpuguard: container 'kserve-container': ") for w in warnings)


def test_audit_mode_admits_and_records_the_violations_for_the_audit_log() -> None:
    policy = policy_with(mode="audit")
    outcome = validate(predictor_with({"limits": {"nvidia.com/gpu": "0.5"}}), policy)
    assert outcome.decision == "audited"
    assert outcome.response.allowed
    assert outcome.response.warnings is None
    assert "not a whole number" in (outcome.response.audit_annotations or {})["gpuguard.io/violations"]


def test_pod_update_and_out_of_scope_pods_are_not_validated(policy: Policy) -> None:
    bad = predictor_with({"limits": {"nvidia.com/gpu": "0.5"}})
    assert validate(bad.model_copy(update={"operation": "UPDATE"}), policy).decision == "ignored"
    plain = admission_request("review-plain-pod.json")
    assert validate(plain, policy).decision == "ignored"


def test_inference_service_with_a_fractional_gpu_is_denied_at_apply(policy: Policy) -> None:
    outcome = validate(admission_request("review-isvc-fractional-gpu.json"), policy)
    assert outcome.decision == "denied"
    assert outcome.response.status is not None
    message = outcome.response.status.message
    assert message.startswith("gpuguard denied InferenceService models/llama-frac: predictor.model: ")
    assert "nvidia.com/gpu limit '0.5' is not a whole number" in message


def test_inference_service_update_mixing_whole_gpus_and_mig_is_denied(policy: Policy) -> None:
    request = admission_request("review-isvc-mig-mixed.json")
    assert request.operation == "UPDATE"
    outcome = validate(request, policy)
    assert outcome.decision == "denied"
    assert outcome.response.status is not None
    assert "MIG devices (nvidia.com/mig-1g.5gb) together" in outcome.response.status.message


def test_good_inference_service_is_allowed(policy: Policy) -> None:
    outcome = validate(admission_request("review-isvc-sklearn.json"), policy)
    assert outcome.response.allowed
    assert outcome.decision == "allowed"


def test_inference_service_delete_is_allowed(policy: Policy) -> None:
    request = admission_request("review-isvc-fractional-gpu.json", operation="DELETE")
    assert validate(request, policy).decision == "ignored"


def test_inference_service_transformer_and_predictor_are_counted_as_separate_pods(policy: Policy) -> None:
    request = admission_request("review-isvc-sklearn.json")
    isvc = copy.deepcopy(request.object)
    assert isvc is not None
    isvc["spec"]["predictor"]["model"]["resources"] = {"limits": {"nvidia.com/gpu": "4"}}
    isvc["spec"]["transformer"] = {"containers": [{"name": "kserve-container", "image": "t:1",
                                                   "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}
    assert validate(with_object(request, isvc), policy).decision == "allowed"


def test_validation_answer_echoes_the_request_uid(policy: Policy) -> None:
    request = admission_request("review-isvc-fractional-gpu.json")
    assert validate(request, policy).response.uid == request.uid

"""What /mutate adds to KServe predictor pods, and what it leaves alone."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from gpuguard.contracts.admission import AdmissionRequest, decode_patch
from gpuguard.policy.model import Policy
from tests.conftest import admission_request, patched, policy_with, with_object
from webhook.review import mutate

IN_SCOPE = [
    "review-knative-triton.json",
    "review-knative-triton-kserve-scraping.json",
    "review-knative-triton-no-metrics.json",
    "review-standard-vllm.json",
    "review-standard-huggingface.json",
    "review-knative-sklearn.json",
    "review-knative-small-model.json",
    "review-standard-custom.json",
    "review-standard-explicit-gpu.json",
    "review-knative-fractional-gpu.json",
    "review-v1beta1-sklearn.json",
]
OUT_OF_SCOPE = ["review-knative-transformer.json", "review-plain-pod.json"]


def mutated_pod(name: str, policy: Policy, **changes: Any) -> dict[str, Any]:
    request = admission_request(name, **changes)
    return patched(request, mutate(request, policy).response)


def admit_changed(request: AdmissionRequest, pod: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """Admit a changed copy of a canonical pod and return it as stored."""
    changed = with_object(request, pod)
    return patched(changed, mutate(changed, policy).response)


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod["spec"].get("containers", []) + pod["spec"].get("initContainers", []) if c["name"] == name]
    assert len(found) == 1
    return found[0]


def gpu_keys(c: dict[str, Any]) -> set[str]:
    resources = c.get("resources") or {}
    names = {*(resources.get("limits") or {}), *(resources.get("requests") or {})}
    return {n for n in names if n.startswith("nvidia.com/")}


@pytest.mark.parametrize("name", IN_SCOPE)
@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_every_patched_pod_is_schema_valid(name: str, version: str, policy: Policy) -> None:
    pod = mutated_pod(name, policy)
    kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize("name", IN_SCOPE)
def test_admitting_the_mutated_pod_again_changes_nothing(name: str, policy: Policy) -> None:
    request = admission_request(name)
    once = patched(request, mutate(request, policy).response)
    again = mutate(with_object(request, once), policy)
    assert decode_patch(again.response) == []
    assert again.decision == "allowed"


@pytest.mark.parametrize("name", IN_SCOPE)
def test_queue_proxy_and_storage_initializer_never_get_a_gpu(name: str, policy: Policy) -> None:
    pod = mutated_pod(name, policy)
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        if c["name"] != "kserve-container":
            assert gpu_keys(c) == set(), c["name"]


@pytest.mark.parametrize("name", OUT_OF_SCOPE)
def test_pods_outside_kserve_predictors_are_allowed_unchanged(name: str, policy: Policy) -> None:
    outcome = mutate(admission_request(name), policy)
    assert outcome.response.allowed
    assert outcome.response.patch is None
    assert outcome.decision == "ignored"


def test_pod_update_is_never_mutated(policy: Policy) -> None:
    outcome = mutate(admission_request("review-knative-triton.json", operation="UPDATE"), policy)
    assert outcome.response.patch is None
    assert outcome.decision == "ignored"


def test_triton_predictor_gets_a_whole_gpu_tolerations_selector_and_scheduler(policy: Policy) -> None:
    pod = mutated_pod("review-knative-triton.json", policy)
    model = container(pod, "kserve-container")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert model["resources"]["limits"]["cpu"] == "1", "existing limits are kept"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert len(pod["spec"]["tolerations"]) == 3, "the two default tolerations stay"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["spec"]["schedulerName"] == "gpuguard-scheduler"
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "defaults"


def test_a_model_its_owners_mark_small_gets_a_mig_slice_instead_of_a_whole_gpu(policy: Policy) -> None:
    pod = mutated_pod("review-knative-small-model.json", policy)
    assert gpu_keys(container(pod, "kserve-container")) == {"nvidia.com/mig-1g.10gb"}
    assert container(pod, "kserve-container")["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "small-models-on-mig"
    assert "affinity" not in pod["spec"], "only whole GPUs need the not-shared node affinity"


@pytest.mark.parametrize("name", ["review-knative-sklearn.json", "review-v1beta1-sklearn.json"])
def test_cpu_only_model_servers_get_no_gpu_and_no_gpu_placement(name: str, policy: Policy) -> None:
    request = admission_request(name)
    pod = patched(request, mutate(request, policy).response)
    assert request.object is not None
    assert gpu_keys(container(pod, "kserve-container")) == set()
    assert pod["spec"].get("tolerations") == request.object["spec"].get("tolerations")
    assert "nodeSelector" not in pod["spec"] and "affinity" not in pod["spec"]
    assert pod["spec"].get("schedulerName") == request.object["spec"].get("schedulerName")
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "cpu-only-servers"


def test_vllm_in_an_llm_namespace_follows_the_llm_rule(policy: Policy) -> None:
    pod = mutated_pod("review-standard-vllm.json", policy)
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "llm"


def test_explicit_gpu_count_is_kept(policy: Policy) -> None:
    pod = mutated_pod("review-standard-explicit-gpu.json", policy)
    resources = container(pod, "kserve-container")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"


def test_a_gpu_given_only_as_a_request_gets_the_equal_limit(policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "2"}}
    result = admit_changed(request, pod, policy)
    assert result["spec"]["containers"][0]["resources"] == {
        "requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}
    }


def test_an_existing_gpu_toleration_is_not_duplicated(policy: Policy) -> None:
    request = admission_request("review-knative-triton.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["tolerations"].append({"key": "nvidia.com/gpu", "operator": "Exists"})
    result = admit_changed(request, pod, policy)
    assert [t["key"] for t in result["spec"]["tolerations"]].count("nvidia.com/gpu") == 1


def test_a_toleration_of_everything_covers_the_gpu_taint(policy: Policy) -> None:
    request = admission_request("review-knative-triton.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["tolerations"] = [{"operator": "Exists"}]
    result = admit_changed(request, pod, policy)
    assert result["spec"]["tolerations"] == [{"operator": "Exists"}]


def test_a_node_selector_value_set_by_the_user_is_kept_with_a_warning(policy: Policy) -> None:
    request = admission_request("review-standard-vllm.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    outcome = mutate(with_object(request, pod), policy)
    result = patched(with_object(request, pod), outcome.response)
    assert result["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert any("kept nodeSelector nvidia.com/gpu.product" in w for w in outcome.response.warnings or ())


def test_a_custom_scheduler_set_by_the_user_is_kept(policy: Policy) -> None:
    request = admission_request("review-standard-vllm.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["schedulerName"] = "volcano"
    result = admit_changed(request, pod, policy)
    assert result["spec"]["schedulerName"] == "volcano"


def test_triton_gets_prometheus_io_annotations_when_kserve_scraping_is_off(policy: Policy) -> None:
    annotations = mutated_pod("review-knative-triton.json", policy)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8002"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "prometheus.kserve.io/port" not in annotations


def test_triton_gets_kserve_annotations_with_its_metrics_port_when_kserve_scrapes(policy: Policy) -> None:
    request = admission_request("review-knative-triton-kserve-scraping.json")
    outcome = mutate(request, policy)
    annotations = patched(request, outcome.response)["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == "8092", "from --metrics-port=8092 in Triton's args"
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    assert "prometheus.io/port" not in annotations, "KServe owns prometheus.io/* in scraping mode"
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "false", "never overridden: it needs qpext"
    assert any("set serving.kserve.io/enable-metric-aggregation: \"true\"" in w for w in outcome.response.warnings or ())


def test_knative_triton_with_kserve_aggregation_is_scraped_through_queue_proxy(policy: Policy) -> None:
    request = admission_request("review-knative-triton-kserve-scraping.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"]["serving.kserve.io/enable-metric-aggregation"] = "true"
    outcome = mutate(with_object(request, pod), policy)
    annotations = patched(with_object(request, pod), outcome.response)["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == "8092", "queue-proxy's aggregator scrapes Triton here"
    assert annotations["prometheus.io/scrape"] == "true", "KServe sets port and path, never scrape"
    assert "prometheus.io/port" not in annotations
    assert not [w for w in outcome.response.warnings or () if "not scraped" in w]


def test_standard_mode_triton_under_kserve_scraping_is_told_it_will_not_be_scraped(policy: Policy) -> None:
    request = admission_request("review-standard-vllm.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    model = pod["spec"]["containers"][0]
    model.update({"image": "nvcr.io/nvidia/tritonserver:24.08-py3", "command": ["tritonserver"],
                  "args": ["--model-store=/mnt/models"]})
    pod["metadata"].setdefault("annotations", {})["serving.kserve.io/enable-prometheus-scraping"] = "true"
    outcome = mutate(with_object(request, pod), policy)
    annotations = patched(with_object(request, pod), outcome.response)["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == "8002"
    assert any("in Standard mode" in w and "not scraped" in w for w in outcome.response.warnings or ())


def test_triton_with_metrics_disabled_gets_no_annotations_and_a_warning(policy: Policy) -> None:
    request = admission_request("review-knative-triton-no-metrics.json")
    outcome = mutate(request, policy)
    annotations = patched(request, outcome.response)["metadata"]["annotations"]
    assert not [k for k in annotations if k.startswith("prometheus.")]
    assert any("--allow-metrics=false" in w for w in outcome.response.warnings or ())


def test_non_triton_runtimes_get_no_scrape_annotations(policy: Policy) -> None:
    annotations = mutated_pod("review-standard-vllm.json", policy)["metadata"]["annotations"]
    assert not [k for k in annotations if k.startswith("prometheus.")]


def test_annotation_keys_with_slashes_are_escaped_in_the_patch(policy: Policy) -> None:
    ops = decode_patch(mutate(admission_request("review-knative-triton.json"), policy).response)
    paths = [op["path"] for op in ops]
    assert "/metadata/annotations/prometheus.io~1port" in paths
    assert "/spec/containers/0/resources/limits/nvidia.com~1gpu" in paths


def test_a_pod_without_annotations_gets_the_whole_map_added(policy: Policy) -> None:
    request = admission_request("review-standard-vllm.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    del pod["metadata"]["annotations"]
    outcome = mutate(with_object(request, pod), policy)
    ops = decode_patch(outcome.response)
    assert {"op": "add", "path": "/metadata/annotations", "value": {"gpuguard.io/applied": "llm"}} in ops
    assert patched(with_object(request, pod), outcome.response)["metadata"]["annotations"] == {
        "gpuguard.io/applied": "llm"
    }


def test_namespace_comes_from_the_request_not_the_pod(policy: Policy) -> None:
    request = admission_request("review-standard-vllm.json")
    assert request.object is not None and "namespace" not in request.object["metadata"]
    assert mutate(request, policy).rule == "llm"
    assert mutate(request.model_copy(update={"namespace": "models"}), policy).rule == "defaults"


def test_a_rule_with_zero_gpus_adds_nothing_gpu_related() -> None:
    policy = policy_with(rules=[{"name": "cpu-only", "match": {"runtimes": ["sklearn"]}, "gpu": {"count": 0}}])
    pod = mutated_pod("review-knative-sklearn.json", policy)
    assert gpu_keys(container(pod, "kserve-container")) == set()
    assert "nodeSelector" not in pod["spec"]
    assert pod["spec"]["schedulerName"] == "default-scheduler"
    assert pod["metadata"]["annotations"]["gpuguard.io/applied"] == "cpu-only"


def test_time_slicing_asks_for_one_shared_replica_on_time_sliced_nodes() -> None:
    policy = policy_with(
        rules=[{"name": "dev", "match": {"runtimes": ["sklearn"]}, "gpu": {"sharing": "timeSlicing"}}],
        timeSlicing={"renameByDefault": True, "nodes": []},
    )
    pod = mutated_pod("review-knative-sklearn.json", policy)
    assert container(pod, "kserve-container")["resources"]["limits"]["nvidia.com/gpu.shared"] == "1"
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.sharing-strategy"] == "time-slicing"


@pytest.mark.parametrize(
    ("annotation", "value", "expected_limits", "expected_selector"),
    [
        ("gpuguard.io/gpu-count", "2", {"nvidia.com/gpu": "2"}, None),
        ("gpuguard.io/mig-profile", "3g.40gb", {"nvidia.com/mig-3g.40gb": "1"}, None),
        ("gpuguard.io/gpu-product", "NVIDIA-A100-SXM4-80GB", {"nvidia.com/gpu": "1"}, "NVIDIA-A100-SXM4-80GB"),
    ],
)
def test_allowed_user_annotations_override_the_policy(
    annotation: str, value: str, expected_limits: dict[str, str], expected_selector: str | None, policy: Policy
) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"][annotation] = value
    result = admit_changed(request, pod, policy)
    limits = container(result, "kserve-container")["resources"]["limits"]
    assert {k: v for k, v in limits.items() if k.startswith("nvidia.com/")} == expected_limits
    if expected_selector:
        assert result["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == expected_selector


def test_annotations_not_listed_in_user_overrides_are_ignored_with_a_warning() -> None:
    policy = policy_with(userOverrides=["gpu-product"])
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"]["gpuguard.io/gpu-count"] = "4"
    outcome = mutate(with_object(request, pod), policy)
    limits = container(patched(with_object(request, pod), outcome.response), "kserve-container")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert any("gpuguard.io/gpu-count ignored" in w for w in outcome.response.warnings or ())


@pytest.mark.parametrize(("allowed", "skipped"), [(["skip"], True), ([], False)])
def test_skip_annotation_is_honoured_only_where_policy_allows(allowed: list[str], skipped: bool) -> None:
    policy = policy_with(userOverrides=allowed)
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"]["gpuguard.io/skip"] = "true"
    outcome = mutate(with_object(request, pod), policy)
    assert (outcome.decision == "skipped") is skipped
    assert (outcome.response.patch is None) is skipped


def test_a_pod_without_a_kserve_container_and_no_gpu_gets_no_gpu(policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["containers"][0]["name"] = "main"
    outcome = mutate(with_object(request, pod), policy)
    result = patched(with_object(request, pod), outcome.response)
    assert gpu_keys(result["spec"]["containers"][0]) == set()
    assert any("no kserve-container" in w for w in outcome.response.warnings or ())


def test_the_single_container_that_already_asks_for_a_gpu_is_the_model_container(policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["containers"][0]["name"] = "main"
    pod["spec"]["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"}}
    result = admit_changed(request, pod, policy)
    assert result["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert result["spec"]["schedulerName"] == "gpuguard-scheduler"


def test_bad_override_annotations_are_warned_about_at_mutation_too(policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"].update({"gpuguard.io/gpu-count": "two"})
    outcome = mutate(with_object(request, pod), policy)
    assert any("ignored: annotation gpuguard.io/gpu-count" in w and "'two'" in w for w in outcome.response.warnings or ())


def test_a_misspelt_gpuguard_annotation_is_warned_about_with_the_likely_key(policy: Policy) -> None:
    request = admission_request("review-standard-custom.json")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["metadata"]["annotations"]["gpuguard.io/gpu-cout"] = "2"
    outcome = mutate(with_object(request, pod), policy)
    assert any("'gpuguard.io/gpu-cout' is not one gpuguard reads" in w and "did you mean gpuguard.io/gpu-count?" in w
               for w in outcome.response.warnings or ())

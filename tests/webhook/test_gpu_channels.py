"""Every channel through which a container can reach a GPU, through /mutate and /validate as kube-apiserver calls them.

Each case is a realistic pod shape (KServe Standard and Knative predictors, native sidecars, KAI-Scheduler, HAMi,
DRA) under the default policy (enforce, maxGpusPerPod 4): the GPUs it gets are counted once, whatever the container,
resource kind or channel, and a pod that already gets one is never given another.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes_validate
import pytest

from gpuguard.policy.model import Policy
from tests.conftest import admission_request, patched, policy_with, with_object
from webhook.review import Outcome, mutate, validate

Pod = dict[str, Any]
GPU_PREFIXES = ("nvidia.com/", "amd.com/", "intel.com/", "habana.ai/")


@dataclass
class Admitted:
    mutated: Outcome
    pod: Pod
    verdict: Outcome

    @property
    def denial(self) -> str:
        status = self.verdict.response.status
        return status.message if status is not None else ""


def admit(fixture: str, change: Callable[[Pod], None] | None = None, *, policy: Policy, namespace: str = "models") -> Admitted:
    """The fixture's pod (changed), through /mutate, patched, then through /validate."""
    request = admission_request(fixture, namespace=namespace)
    pod = copy.deepcopy(request.object)
    assert pod is not None
    if change is not None:
        change(pod)
    request = with_object(request, pod)
    mutated = mutate(request, policy)
    stored = patched(request, mutated.response)
    return Admitted(mutated, stored, validate(with_object(request, stored), policy))


def model(pod: Pod) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "kserve-container")


def gpu_limits(container: dict[str, Any]) -> dict[str, Any]:
    limits = (container.get("resources") or {}).get("limits") or {}
    return {k: v for k, v in limits.items() if k.startswith(GPU_PREFIXES) and "gpumem" not in k and "gpucores" not in k}




def set_model_limits(values: dict[str, str]) -> Callable[[Pod], None]:
    def change(pod: Pod) -> None:
        model(pod)["resources"]["limits"].update(values)
    return change


def native_sidecar(resources: dict[str, str], *, privileged: bool = False) -> Callable[[Pod], None]:
    """An init container with restartPolicy Always: since Kubernetes 1.28 it runs beside the app containers."""
    def change(pod: Pod) -> None:
        sidecar: dict[str, Any] = {"name": "embedder", "image": "ghcr.io/acme/embedder:1.0", "restartPolicy": "Always",
                                   "resources": {"limits": dict(resources)}}
        if privileged:
            sidecar["securityContext"] = {"privileged": True}
        pod["spec"]["initContainers"].append(sidecar)
    return change


# ---------------------------------------------------------------------------------------------- counting every kind


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param(lambda p: (set_model_limits({"nvidia.com/gpu": "4"})(p),
                                native_sidecar({"nvidia.com/gpu": "4"})(p)),
                     "asks for 8 GPUs in all (8 nvidia.com/gpu)", id="native-sidecar-beside-the-model"),
        pytest.param(set_model_limits({"nvidia.com/mig-7g.80gb": "8"}),
                     "8 nvidia.com/mig-7g.80gb = 8 GPUs", id="eight-whole-h100s-as-mig"),
        pytest.param(set_model_limits({"nvidia.com/mig-1g.10gb": "100"}),
                     "100 nvidia.com/mig-1g.10gb = 14.29 GPUs at 1/7 of a GPU each", id="hundred-1g-slices"),
        pytest.param(set_model_limits({"nvidia.com/gpu.shared": "100"}), "100 nvidia.com/gpu.shared", id="replicas"),
        pytest.param(set_model_limits({"amd.com/gpu": "100"}), "100 amd.com/gpu", id="amd"),
        pytest.param(set_model_limits({"intel.com/gpu": "100"}), "100 intel.com/gpu", id="intel"),
        pytest.param(set_model_limits({"habana.ai/gaudi": "8"}), "8 habana.ai/gaudi", id="gaudi"),
    ],
)
def test_max_gpus_per_pod_bounds_every_gpu_kind_in_every_container(
    change: Callable[[Pod], None], fragment: str, policy: Policy
) -> None:
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert admitted.verdict.decision == "denied"
    assert fragment in admitted.denial
    assert "the limit is 4 per pod" in admitted.denial


def test_a_custom_gpu_type_declared_by_the_inference_service_is_counted(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["metadata"]["annotations"]["serving.kserve.io/gpu-resource-types"] = '["example.com/npu"]'
        model(pod)["resources"]["limits"]["example.com/npu"] = "9"
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert "9 example.com/npu" in admitted.denial
    assert gpu_limits(model(admitted.pod)) == {}, "a pod that gets a device of a GPU type gets no nvidia.com/gpu too"


def test_a_custom_gpu_type_in_the_policy_is_counted_and_never_doubled() -> None:
    policy = policy_with(gpuResourceTypes=["example.com/npu"])
    admitted = admit("review-standard-custom.json", set_model_limits({"example.com/npu": "2"}), policy=policy)
    assert admitted.verdict.decision == "allowed"
    assert "nvidia.com/gpu" not in model(admitted.pod)["resources"]["limits"]


def test_a_regular_init_container_counts_alone_but_with_the_sidecars_started_before_it(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        set_model_limits({"nvidia.com/gpu": "2"})(pod)
        native_sidecar({"nvidia.com/gpu": "1"})(pod)
        pod["spec"]["initContainers"].append({"name": "warmup", "image": "ghcr.io/acme/warmup:1",
                                              "resources": {"limits": {"nvidia.com/gpu": "4"}}})
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert "asks for 5 GPUs in all" in admitted.denial, "warm-up (4) runs while the sidecar (1) already holds one"


def test_sidecars_and_app_containers_within_the_limit_are_admitted(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        set_model_limits({"nvidia.com/gpu": "2"})(pod)
        native_sidecar({"nvidia.com/gpu": "2"})(pod)
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert admitted.verdict.decision == "allowed", admitted.denial


# ------------------------------------------------------------------------------------------------------ mixing kinds


@pytest.mark.parametrize(
    ("sidecar", "kinds"),
    [({"nvidia.com/mig-1g.10gb": "1"}, "whole GPUs (nvidia.com/gpu) and MIG devices (nvidia.com/mig-1g.10gb)"),
     ({"nvidia.com/gpu.shared": "1"}, "whole GPUs (nvidia.com/gpu) and time-sliced GPUs (nvidia.com/gpu.shared)")],
)
def test_kinds_are_never_mixed_across_containers(sidecar: dict[str, str], kinds: str, policy: Policy) -> None:
    def change(pod: Pod) -> None:
        set_model_limits({"nvidia.com/gpu": "1"})(pod)
        native_sidecar(sidecar)(pod)
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert admitted.verdict.decision == "denied"
    assert f"pod: asks for {kinds} together" in admitted.denial
    assert "one kind only in the whole pod" in admitted.denial


def test_zero_whole_gpus_beside_a_mig_slice_is_a_mig_request(policy: Policy) -> None:
    admitted = admit("review-standard-custom.json",
                     set_model_limits({"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "1"}), policy=policy)
    assert admitted.verdict.decision == "allowed", admitted.denial
    assert gpu_limits(model(admitted.pod)) == {"nvidia.com/gpu": "0", "nvidia.com/mig-1g.10gb": "1"}
    assert "affinity" not in admitted.pod["spec"], "a MIG request is not a whole-GPU request"


@pytest.mark.parametrize("zero", ["0", 0, "0m"])
def test_an_explicit_zero_means_no_gpu_and_no_gpu_placement(zero: Any, policy: Policy) -> None:
    admitted = admit("review-standard-custom.json", set_model_limits({"nvidia.com/gpu": zero}), policy=policy)
    spec = admitted.pod["spec"]
    assert gpu_limits(model(admitted.pod)) == {"nvidia.com/gpu": zero}
    assert "tolerations" not in spec and "nodeSelector" not in spec and "affinity" not in spec
    assert spec["schedulerName"] == "default-scheduler"
    assert admitted.verdict.decision == "allowed"


# ------------------------------------------------------------------------------------- device access without a request


def test_a_privileged_native_sidecar_in_a_gpu_pod_is_denied(policy: Policy) -> None:
    admitted = admit("review-standard-custom.json", native_sidecar({}, privileged=True), policy=policy)
    assert gpu_limits(model(admitted.pod)) == {"nvidia.com/gpu": "1"}, "the model container got the policy's GPU"
    assert "container 'embedder': is privileged in a pod that gets GPUs" in admitted.denial


def test_a_privileged_regular_init_container_in_a_gpu_pod_is_denied(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["spec"]["initContainers"][0]["securityContext"] = {"privileged": True}
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert "container 'storage-initializer': is privileged" in admitted.denial


def test_a_privileged_container_of_a_cpu_only_pod_is_not_a_gpu_problem(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        model(pod)["image"] = "kserve/sklearnserver:v0.14.0"
        model(pod)["securityContext"] = {"privileged": True}
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert admitted.verdict.decision == "allowed", admitted.denial


@pytest.mark.parametrize(
    ("where", "entry", "how"),
    [
        ("env", {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, "sets NVIDIA_VISIBLE_DEVICES=all"),
        ("env", {"name": "NVIDIA_VISIBLE_DEVICES", "value": "GPU-5a1b2c3d-0000-1111-2222-333344445555"},
         "sets NVIDIA_VISIBLE_DEVICES=GPU-5a1b2c3d"),
        ("env", {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {"name": "gpus", "key": "ids"}}},
         "sets NVIDIA_VISIBLE_DEVICES from a reference"),
        ("volumeMounts", {"name": "all-gpus", "mountPath": "/var/run/nvidia-container-devices/all"},
         "mounts /var/run/nvidia-container-devices/all"),
    ],
)
def test_a_container_reaching_gpus_through_the_runtime_is_denied_and_gets_no_second_gpu(
    where: str, entry: dict[str, Any], how: str, policy: Policy
) -> None:
    def change(pod: Pod) -> None:
        sidecar = {"name": "metrics-helper", "image": "ghcr.io/acme/helper:1", where: [entry]}
        pod["spec"]["containers"].append(sidecar)
        if where == "volumeMounts":
            pod["spec"]["volumes"].append({"name": "all-gpus", "hostPath": {"path": "/dev/null"}})
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert gpu_limits(model(admitted.pod)) == {}, "the pod already sees GPUs: it is not given one more"
    assert f"container 'metrics-helper': {how}" in admitted.denial
    assert "the NVIDIA container runtime then hands it GPUs nobody requested" in admitted.denial


@pytest.mark.parametrize("value", ["none", "void", ""])
def test_nvidia_visible_devices_that_name_no_gpu_are_fine(value: str, policy: Policy) -> None:
    def change(pod: Pod) -> None:
        model(pod)["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": value}]
    assert admit("review-standard-custom.json", change, policy=policy).verdict.decision == "allowed"


def test_a_cdi_annotation_naming_nvidia_devices_is_denied(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["metadata"]["annotations"]["cdi.k8s.io/gpus"] = "nvidia.com/gpu=all"
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert "annotation cdi.k8s.io/gpus: asks a CDI-enabled runtime for NVIDIA devices" in admitted.denial
    assert gpu_limits(model(admitted.pod)) == {}


def test_device_access_is_allowed_where_the_policy_allows_privileged_gpu_pods() -> None:
    policy = policy_with(limits={"maxGpusPerPod": 4, "denyPrivilegedGpuPods": False})
    admitted = admit("review-standard-custom.json", native_sidecar({}, privileged=True), policy=policy)
    assert admitted.verdict.decision == "allowed"


# -------------------------------------------------------------------------------- DRA and other GPU schedulers


def test_a_dra_pod_gets_no_extended_resource_and_keeps_its_claims(policy: Policy) -> None:
    admitted = admit("review-dra-claim.json", policy=policy)
    assert gpu_limits(model(admitted.pod)) == {}, "a claim already gives the model its GPU"
    assert model(admitted.pod)["resources"]["claims"] == [{"name": "gpu"}]
    assert admitted.pod["spec"]["schedulerName"] == "default-scheduler"
    assert admitted.pod["metadata"]["annotations"]["gpuguard.io/applied"] == "stepped-aside: dra"
    assert admitted.verdict.decision == "allowed"
    kubernetes_validate.validate(admitted.pod, "1.34.0", strict=True)


def test_a_kai_fractional_pod_keeps_its_fraction_and_its_scheduler(policy: Policy) -> None:
    admitted = admit("review-kai-fractional.json", policy=policy)
    assert gpu_limits(model(admitted.pod)) == {}
    assert admitted.pod["spec"]["schedulerName"] == "kai-scheduler"
    assert "tolerations" not in admitted.pod["spec"]
    assert admitted.pod["metadata"]["annotations"]["gpuguard.io/applied"] == "stepped-aside: kai-scheduler"
    assert admitted.verdict.decision == "allowed"


def test_a_kai_queue_label_alone_makes_the_pod_kais(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["metadata"]["annotations"].pop("gpu-fraction")
        pod["spec"]["schedulerName"] = "default-scheduler"
    admitted = admit("review-kai-fractional.json", change, policy=policy)
    assert gpu_limits(model(admitted.pod)) == {}
    assert admitted.pod["spec"]["schedulerName"] == "default-scheduler"


def test_kai_fractions_count_towards_the_pod_limit(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["metadata"]["annotations"].update({"gpu-fraction": "0.75", "gpu-fraction-num-devices": "8"})
    admitted = admit("review-kai-fractional.json", change, policy=policy)
    assert "asks for 6 GPUs in all (6 through KAI-Scheduler's gpu-fraction/gpu-memory)" in admitted.denial


def test_a_hami_pod_is_left_to_hami_but_still_judged(policy: Policy) -> None:
    admitted = admit("review-hami-vgpu.json", policy=policy)
    assert admitted.mutated.response.patch is not None
    assert admitted.pod["spec"]["schedulerName"] == "hami-scheduler"
    assert "nodeSelector" not in admitted.pod["spec"] and "affinity" not in admitted.pod["spec"]
    assert admitted.pod["metadata"]["annotations"]["gpuguard.io/applied"] == "stepped-aside: hami-scheduler"
    assert admitted.verdict.decision == "allowed"
    too_many = admit("review-hami-vgpu.json", set_model_limits({"nvidia.com/gpu": "6"}), policy=policy)
    assert "asks for 6 GPUs in all" in too_many.denial, "a scheduler name never lifts the limits"


def test_another_scheduler_name_cannot_dodge_the_device_access_rule(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["spec"]["containers"].append({"name": "helper", "image": "busybox",
                                          "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]})
    admitted = admit("review-kai-fractional.json", change, policy=policy)
    assert "container 'helper': sets NVIDIA_VISIBLE_DEVICES=all" in admitted.denial


def test_externally_managed_pods_can_be_given_placement_and_judged_only_for_device_access() -> None:
    policy = policy_with(externallyManaged={"mutation": "placement", "validation": "deviceAccess"})
    admitted = admit("review-hami-vgpu.json", set_model_limits({"nvidia.com/gpu": "6"}), policy=policy)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in admitted.pod["spec"]["tolerations"]
    assert admitted.pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert admitted.pod["spec"]["schedulerName"] == "hami-scheduler"
    assert admitted.verdict.decision == "allowed", "HAMi judges its own counts in this mode"


def test_a_scheduler_the_policy_lists_is_stepped_aside_for() -> None:
    policy = policy_with(externallyManaged={"schedulers": ["volcano"]})

    def change(pod: Pod) -> None:
        pod["spec"]["schedulerName"] = "volcano"
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert gpu_limits(model(admitted.pod)) == {}
    assert admitted.pod["metadata"]["annotations"]["gpuguard.io/applied"] == "stepped-aside: volcano"


# ------------------------------------------------------------------------------------------------- shared GPU nodes


def test_a_whole_gpu_pod_never_lands_on_a_time_sliced_or_mps_node(policy: Policy) -> None:
    admitted = admit("review-standard-custom.json", policy=policy)
    terms = admitted.pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.sharing-strategy", "operator": "NotIn", "values": ["time-slicing", "mps"]}]}]
    kubernetes_validate.validate(admitted.pod, "1.29.0", strict=True)


def test_the_not_shared_term_is_added_to_every_existing_affinity_term(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]},
            ]}}}
    admitted = admit("review-standard-custom.json", change, policy=policy)
    terms = admitted.pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    for term in terms:
        assert {"key": "nvidia.com/gpu.sharing-strategy", "operator": "NotIn",
                "values": ["time-slicing", "mps"]} in term["matchExpressions"]
    assert terms[0]["matchExpressions"][0]["key"] == "topology.kubernetes.io/zone", "the user's term is kept"
    assert terms[1]["matchFields"] == [{"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]
    again = mutate(with_object(admission_request("review-standard-custom.json"), admitted.pod), policy)
    assert again.response.patch is None


def test_a_time_sliced_pod_matches_the_shared_product_name_gfd_writes() -> None:
    policy = policy_with(userOverrides=["sharing", "gpu-product"])

    def change(pod: Pod) -> None:
        pod["metadata"]["annotations"].update({"gpuguard.io/sharing": "time-slicing",
                                               "gpuguard.io/gpu-product": "Tesla-T4"})
    admitted = admit("review-standard-custom.json", change, policy=policy)
    spec = admitted.pod["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.sharing-strategy": "time-slicing"}
    expressions = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert expressions == [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["Tesla-T4", "Tesla-T4-SHARED"]}]
    kubernetes_validate.validate(admitted.pod, "1.29.0", strict=True)


# ------------------------------------------------------------------------------------------ the default policy


@pytest.mark.parametrize("image", ["kserve/sklearnserver:v0.14.0", "kserve/lgbserver:v0.14.0",
                                   "kserve/pmmlserver:v0.14.0", "kserve/xgbserver:v0.14.0"])
def test_the_default_policy_gives_kserves_cpu_only_servers_no_gpu(image: str, policy: Policy) -> None:
    def change(pod: Pod) -> None:
        model(pod)["image"] = image
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert gpu_limits(model(admitted.pod)) == {}
    assert admitted.pod["metadata"]["annotations"]["gpuguard.io/applied"] == "cpu-only-servers"


def test_the_default_policy_gives_a_model_marked_small_a_mig_slice(policy: Policy) -> None:
    def change(pod: Pod) -> None:
        pod["metadata"]["labels"]["gpuguard.io/model-size"] = "small"
    admitted = admit("review-standard-custom.json", change, policy=policy)
    assert gpu_limits(model(admitted.pod)) == {"nvidia.com/mig-1g.10gb": "1"}

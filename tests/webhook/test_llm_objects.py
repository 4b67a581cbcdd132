"""LLMInferenceService objects and multi-node InferenceServices judged at `kubectl apply` time."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gpuguard.policy import llmservice
from gpuguard.policy.model import Policy
from gpuguard.policy.multinode import kserve_sizing
from tests.conftest import admission_request, policy_with, with_object
from webhook.review import Outcome, validate

LLM = "review-llmisvc-object.json"
ISVC = "review-isvc-multinode.json"
H100, A100 = "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB"

Change = Callable[[dict[str, Any]], None]


def judged(name: str, change: Change | None = None, policy: Policy | None = None) -> Outcome:
    request = admission_request(name)
    obj = copy.deepcopy(request.object)
    assert obj is not None
    if change is not None:
        change(obj)
    return validate(with_object(request, obj), policy or policy_with())


def set_gpus(container: dict[str, Any], resource: str, count: int) -> None:
    for section in ("limits", "requests"):
        container["resources"][section].pop("nvidia.com/gpu", None)
        container["resources"][section][resource] = str(count)


def spec_main(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    section = obj["spec"]
    for key in path:
        section = section[key]
    container: dict[str, Any] = section["containers"][0]
    return container


@pytest.mark.parametrize("name", [LLM, ISVC])
def test_a_well_formed_multi_node_object_is_allowed(name: str) -> None:
    outcome = judged(name)
    assert outcome.decision == "allowed", outcome.response.status
    assert outcome.rule == "llm"


LLM_REFUSALS: list[tuple[str, Change, list[str]]] = [
    ("workers-unequal", lambda o: set_gpus(spec_main(o, "worker"), "nvidia.com/gpu", 2),
     ["spec.worker.containers[0]", "same whole GPUs", "spec.template.containers[0]"]),
    ("mig-across-nodes", lambda o: set_gpus(spec_main(o, "worker"), "nvidia.com/mig-3g.40gb", 1),
     ["spec.worker pods", "not whole GPUs"]),
    ("tensor-mismatch", lambda o: o["spec"]["parallelism"].update(tensor=8),
     ["spec.parallelism.tensor = 8", "set nvidia.com/gpu: 8", "spec.template.containers[0]"]),
    ("products-differ", lambda o: o["spec"]["worker"]["nodeSelector"].update({"nvidia.com/gpu.product": A100}),
     ["spec.worker.containers[0]", A100, "one product"]),
    ("prefill-tensor", lambda o: o["spec"]["prefill"]["parallelism"].update(tensor=4),
     ["spec.prefill.parallelism.tensor = 4", "spec.prefill.template.containers[0]"]),
    ("data-local", lambda o: o["spec"]["parallelism"].update(data=6, dataLocal=4, tensor=1),
     ["spec.parallelism.data", "not a multiple of dataLocal 4"]),
    ("over-the-limit", lambda o: [set_gpus(spec_main(o, k), "nvidia.com/gpu", 8) for k in ("template", "worker")]
     and o["spec"]["parallelism"].update(tensor=8),
     ["spec.template pods: asks for 8 GPUs", "the limit is 4 per pod"]),
]


@pytest.mark.parametrize(("change", "says"), [(c, s) for _, c, s in LLM_REFUSALS],
                         ids=[i for i, _, _ in LLM_REFUSALS])
def test_a_bad_llminferenceservice_is_refused_naming_the_field_and_the_fix(change: Change, says: list[str]) -> None:
    outcome = judged(LLM, change)
    assert outcome.decision == "denied"
    message = outcome.response.status.message
    assert "gpuguard denied LLMInferenceService llm-prod/llama-3-70b" in message
    for text in says:
        assert text in message
    assert "Fix:" in message


def test_data_parallel_pods_hold_tensor_times_data_local_gpus() -> None:
    def dp(obj: dict[str, Any]) -> None:
        obj["spec"]["parallelism"] = {"tensor": 2, "data": 4, "dataLocal": 2}
    assert judged(LLM, dp).decision == "allowed"
    outcome = judged(LLM, lambda o: (dp(o), o["spec"]["parallelism"].update(dataLocal=1)))
    assert outcome.decision == "denied"
    assert "spec.parallelism.tensor = 2" in outcome.response.status.message


def test_a_section_from_a_config_reference_is_left_to_its_pods() -> None:
    def bare(obj: dict[str, Any]) -> None:
        obj["spec"] = {"model": obj["spec"]["model"], "baseRefs": [{"name": "kserve-config-llm-template"}]}
    outcome = judged(LLM, bare)
    assert outcome.decision == "allowed"
    assert llmservice.workload_pods(admission_request(LLM).object or {})  # the full object does build pods


def test_warn_mode_admits_a_bad_llminferenceservice_with_warnings() -> None:
    policy = policy_with(mode="warn")
    outcome = judged(LLM, lambda o: set_gpus(spec_main(o, "worker"), "nvidia.com/gpu", 2), policy)
    assert outcome.decision == "warned"
    assert any("spec.worker.containers[0]" in w for w in outcome.response.warnings or ())


def test_llminferenceservice_status_updates_are_not_judged() -> None:
    request = admission_request(LLM, sub_resource="status")
    assert validate(request, policy_with()).decision == "ignored"


ISVC_REFUSALS: list[tuple[str, Change, list[str]]] = [
    ("worker-fewer", lambda o: set_gpus(o["spec"]["predictor"]["workerSpec"]["containers"][0], "nvidia.com/gpu", 2),
     ["predictor.workerSpec.containers[0]", "same whole GPUs"]),
    ("tensor-larger", lambda o: o["spec"]["predictor"]["workerSpec"].update(tensorParallelSize=8),
     ["predictor.workerSpec.tensorParallelSize = 8", "predictor.model"]),
    ("mig-worker", lambda o: set_gpus(o["spec"]["predictor"]["workerSpec"]["containers"][0], "nvidia.com/mig-3g.40gb", 1),
     ["predictor.workerSpec pod", "not whole GPUs"]),
    ("fractional-worker", lambda o: o["spec"]["predictor"]["workerSpec"]["containers"][0]["resources"].update(
        limits={"nvidia.com/gpu": "0.5"}, requests={"nvidia.com/gpu": "0.5"}),
     ["predictor.workerSpec.containers[0]", "'0.5' is not a whole number"]),
    ("no-gpus-tp2", lambda o: ([c["resources"]["limits"].pop("nvidia.com/gpu") and c["resources"]["requests"].pop(
        "nvidia.com/gpu") for c in (o["spec"]["predictor"]["model"], o["spec"]["predictor"]["workerSpec"]["containers"][0])],
        o["spec"]["predictor"]["workerSpec"].update(tensorParallelSize=2)),
     ["each pod gets 1 GPUs", "tensorParallelSize = 2"]),
]


@pytest.mark.parametrize(("change", "says"), [(c, s) for _, c, s in ISVC_REFUSALS],
                         ids=[i for i, _, _ in ISVC_REFUSALS])
def test_a_bad_multi_node_inferenceservice_is_refused_naming_the_field(change: Change, says: list[str]) -> None:
    outcome = judged(ISVC, change)
    assert outcome.decision == "denied"
    for text in says:
        assert text in outcome.response.status.message


@pytest.mark.parametrize(("tensor", "pipeline", "head", "worker", "expected"), [
    (4, 2, 4, 4, (2, 4, 4)),      # the usual shape: TP GPUs per node, PP nodes
    (4, 2, 0, 4, (2, 4, 4)),      # head takes what is left
    (4, 2, 8, 4, (1, 8, 0)),      # the head alone holds them all
    (2, 2, 0, 0, (4, 1, 1)),      # nothing set: one GPU per node
    (4, 2, 2, 0, (7, 2, 1)),      # only the head set: one-GPU workers for the rest
    (4, 2, 0, 3, (3, 2, 3)),
])
def test_multi_node_sizing_follows_kserve(tensor: int, pipeline: int, head: int, worker: int,
                                          expected: tuple[int, int, int]) -> None:
    sizing = kserve_sizing(tensor, pipeline, head=head, worker=worker)
    assert (sizing.nodes, sizing.head, sizing.worker) == expected
    assert sizing.error == ""

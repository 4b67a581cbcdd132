"""Read a KServe `serving.kserve.io/v1beta1` InferenceService the way its pods will look.

An InferenceService names its containers in several places: `spec.predictor.model` (the current form), one key per
framework (`spec.predictor.sklearn`, the older form), `spec.predictor.containers` (custom predictors),
`spec.predictor.workerSpec` (multi-node) and the transformer and explainer components. Each becomes a
`ContainerRef` labelled with its path, so a problem reads `predictor.model: nvidia.com/gpu limit '0.5' ...`. Pure.
"""

from __future__ import annotations

from typing import Any

from gpuguard.policy import podspec
from gpuguard.policy.loading import PRODUCT_LABEL
from gpuguard.policy.podspec import ContainerRef, JsonObject
from gpuguard.policy.resolve import Effective, Problem
from gpuguard.policy.runtime import RUNTIME_IMAGES, Runtime, runtime_of_container, runtime_of_model_format
from gpuguard.policy.validation import containers_problems, pod_problems

FRAMEWORK_KEYS = (
    "sklearn", "xgboost", "lightgbm", "tensorflow", "pytorch", "triton", "onnx", "pmml", "paddle", "huggingface",
)
GROUP = "serving.kserve.io"
KIND = "InferenceService"


def predictor(isvc: JsonObject) -> JsonObject:
    return podspec.mapping(podspec.spec_of(isvc).get("predictor"))


def components(isvc: JsonObject) -> dict[str, tuple[JsonObject, list[ContainerRef]]]:
    """Each component that becomes its own pod (predictor, its multi-node workers, transformer, explainer), with
    its spec section (for the node selector) and its containers."""
    pred = predictor(isvc)
    refs: list[ContainerRef] = []
    if isinstance(pred.get("model"), dict):
        refs.append(ContainerRef("predictor.model", 0, pred["model"], label="predictor.model"))
    refs += [
        ContainerRef(f"predictor.{key}", 0, pred[key], label=f"predictor.{key}")
        for key in FRAMEWORK_KEYS
        if isinstance(pred.get(key), dict)
    ]
    found = {"predictor": (pred, refs + _listed(pred, "predictor"))}
    worker = podspec.mapping(pred.get("workerSpec"))
    found["predictor.workerSpec"] = (worker, _listed(worker, "predictor.workerSpec"))
    for name in ("transformer", "explainer"):
        section = podspec.mapping(podspec.spec_of(isvc).get(name))
        found[name] = (section, _listed(section, name))
    return {name: value for name, value in found.items() if value[1]}


def container_refs(isvc: JsonObject) -> list[ContainerRef]:
    """Every container the InferenceService declares, predictor first."""
    return [ref for _section, refs in components(isvc).values() for ref in refs]


def _listed(component: JsonObject, prefix: str) -> list[ContainerRef]:
    found = []
    for kind in ("initContainers", "containers"):
        for index, body in enumerate(podspec.sequence(component.get(kind))):
            label = f"{prefix}.{kind}[{index}]"
            found.append(ContainerRef(kind, index, podspec.mapping(body), label=label))
    return found


def runtime_of(isvc: JsonObject) -> Runtime:
    """From the model format or ServingRuntime, a legacy framework key, or the first custom container."""
    pred = predictor(isvc)
    model = podspec.mapping(pred.get("model"))
    if model:
        model_format = podspec.mapping(model.get("modelFormat")).get("name")
        return runtime_of_model_format(_text(model_format), _text(model.get("runtime")))
    for key in FRAMEWORK_KEYS:
        if isinstance(pred.get(key), dict):
            return runtime_of_model_format(key, None)
    listed = podspec.sequence(pred.get("containers"))
    return runtime_of_container(podspec.mapping(listed[0])) if listed else "custom"


def isvc_problems(isvc: JsonObject, effective: Effective) -> list[Problem]:
    """What validation finds in an InferenceService: its containers, and the user annotations resolved."""
    # The checks that do not depend on containers (annotations, sharing) apply as for a pod.
    problems = pod_problems({}, effective)
    for section, refs in components(isvc).values():
        product = podspec.text(podspec.mapping(section.get("nodeSelector")).get(PRODUCT_LABEL))
        problems += containers_problems(refs, effective.limits, product=product, catalog=effective.catalog)
    return problems


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def predictor_pod(isvc: JsonObject) -> dict[str, Any]:
    """The predictor pod KServe would create, reduced to what GPU policy reads: labels, annotations, the model
    container (`kserve-container`, with the resources and node selector the InferenceService declares)."""
    metadata = podspec.mapping(isvc.get("metadata"))
    pred = predictor(isvc)
    model_refs = [r for r in components(isvc).get("predictor", ({}, []))[1] if r.kind != "initContainers"]
    container = dict(model_refs[0].body) if model_refs else {}
    container = {k: v for k, v in container.items() if k not in ("modelFormat", "runtime", "storageUri",
                                                                  "protocolVersion", "storage")}
    container["name"] = podspec.MODEL_CONTAINER
    runtime = runtime_of(isvc)
    if "image" not in container and runtime in RUNTIME_IMAGES:
        container["image"] = RUNTIME_IMAGES[runtime]
    pod_spec: dict[str, Any] = {"containers": [container]}
    for key in ("nodeSelector", "tolerations", "schedulerName"):
        if key in pred:
            pod_spec[key] = pred[key]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{metadata.get('name', 'isvc')}-predictor-",
            "labels": {**podspec.labels_of(isvc), podspec.ISVC_LABEL: str(metadata.get("name", "")),
                       podspec.COMPONENT_LABEL: "predictor"},
            "annotations": dict(podspec.annotations_of(isvc)),
        },
        "spec": pod_spec,
    }

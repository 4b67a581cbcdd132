"""Judge a KServe `serving.kserve.io/v1beta1` InferenceService by the pods it will create.

The InferenceService check must predict exactly what its pods' admission will decide, or `kubectl apply` succeeds and
the pods silently never appear. So it builds each pod the way KServe's controller does and sends it through the same
steps as a pod (`gpuguard.policy.admission`: resolve, mutate, judge the mutated pod):
- the predictor pod: labels `serving.kserve.io/inferenceservice` and `component: predictor` plus the object's and the
  component's labels and annotations; the model container `kserve-container` from `spec.predictor.model` (the
  current form, with the ServingRuntime's image for its model format), a framework key (`spec.predictor.sklearn`, the
  older form) or the first of `spec.predictor.containers` (custom predictors); the component's other containers and
  init containers; and the PodSpec fields a component inlines (node selector, tolerations, affinity, scheduler,
  resource claims, runtime class...);
- the multi-node workers (`spec.predictor.workerSpec`, container `worker-container`), judged like predictor pods;
- transformer and explainer pods, which gpuguard's pod admission leaves alone: what kube-apiserver itself refuses in
  a pod (a GPU quantity that is not a whole number, a request unlike its limit) still denies, since those pods would
  never be created; gpuguard's own rules come back as warnings, so the prediction stays exact.
Problems name the InferenceService field (`predictor.model: nvidia.com/gpu limit '0.5' ...`) rather than the
container KServe will create. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gpuguard.policy import podspec
from gpuguard.policy.admission import admit, problems, view
from gpuguard.policy.model import Policy
from gpuguard.policy.podspec import JsonObject
from gpuguard.policy.resolve import DEFAULTS_RULE, Problem
from gpuguard.policy.validation import QUANTITY
from gpuguard.policy.runtime import RUNTIME_IMAGES, Runtime, runtime_of_container, runtime_of_model_format

FRAMEWORK_KEYS = (
    "sklearn", "xgboost", "lightgbm", "tensorflow", "pytorch", "triton", "onnx", "pmml", "paddle", "huggingface",
)
GROUP = "serving.kserve.io"
KIND = "InferenceService"
WORKER_CONTAINER = "worker-container"
POD_SPEC_KEYS = (
    "nodeSelector", "tolerations", "affinity", "schedulerName", "resourceClaims", "runtimeClassName",
    "priorityClassName", "serviceAccountName", "securityContext", "volumes", "hostNetwork", "hostIPC", "hostPID",
    "topologySpreadConstraints", "imagePullSecrets", "dnsPolicy", "nodeName",
)
"""PodSpec fields a component spec inlines and KServe copies into the pod (those GPU policy can read)."""
MODEL_ONLY_KEYS = ("modelFormat", "runtime", "storageUri", "protocolVersion", "storage")
"""ModelSpec fields that are not container fields."""


@dataclass(frozen=True, slots=True)
class ComponentPod:
    """One pod an InferenceService will create, and where each of its containers comes from."""

    component: str
    """predictor, predictor.workerSpec, transformer or explainer."""
    pod: dict[str, Any]
    paths: Mapping[str, str]
    """`container 'kserve-container'` -> `predictor.model`: how problems are renamed."""
    admitted: bool
    """Whether gpuguard's pod admission mutates and judges this pod (predictor pods and their workers)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    rule: str
    skip: bool
    problems: tuple[Problem, ...]
    """What the predictor pods' admission will refuse."""
    warnings: tuple[str, ...]
    """Problems of pods gpuguard admits unjudged (transformer, explainer), for the user's information."""
    changes: tuple[str, ...] = ()
    """What the pods' mutation will add (`predictor pods get: limits nvidia.com/gpu=1 on kserve-container`)."""
    mutation_warnings: tuple[str, ...] = ()
    """What the pods' mutation will warn about (an ignored override annotation, a kept node selector)."""


def predictor(isvc: JsonObject) -> JsonObject:
    return podspec.mapping(podspec.spec_of(isvc).get("predictor"))


def judge(isvc: JsonObject, policy: Policy, *, namespace: str) -> Verdict:
    """What admission will decide for each pod of this InferenceService."""
    found: list[Problem] = []
    warnings: list[str] = []
    changes: list[str] = []
    mutation_warnings: list[str] = []
    rule, skip = DEFAULTS_RULE, False
    for built in component_pods(isvc):
        if built.admitted:
            admission = admit(built.pod, policy, namespace=namespace)
            changes += [f"{built.component} pods get: {change}" for change in admission.plan.changes]
            mutation_warnings += admission.plan.warnings
            if built.component == "predictor":
                rule, skip = admission.view.effective.rule, admission.view.effective.skip
            found += [_renamed(p, built) for p in admission.problems]
        else:
            seen = view(built.pod, policy, namespace=namespace)
            for problem in problems(built.pod, seen):
                if problem.code == QUANTITY:
                    found.append(_renamed(problem, built))  # kube-apiserver refuses these pods itself
                elif problem not in seen.effective.problems:
                    warnings.append(str(_renamed(problem, built)))
    return Verdict(rule, skip, tuple(dict.fromkeys(found)), tuple(dict.fromkeys(warnings)),
                   tuple(changes), tuple(dict.fromkeys(mutation_warnings)))


def _renamed(problem: Problem, built: ComponentPod) -> Problem:
    where = built.paths.get(problem.where, f"{built.component} {problem.where}")
    return Problem(where, problem.message, problem.fix, problem.code)


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


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------------------------------------------- building pods


def component_pods(isvc: JsonObject) -> list[ComponentPod]:
    """The pods KServe creates for this InferenceService, as gpuguard's admission will see them."""
    pred = predictor(isvc)
    pods = [_predictor_pod(isvc, pred)]
    worker = podspec.mapping(pred.get("workerSpec"))
    if worker:
        pods.append(_component_pod(isvc, worker, "predictor.workerSpec", "predictor", admitted=True,
                                   first_name=WORKER_CONTAINER))
    for name in ("transformer", "explainer"):
        section = podspec.mapping(podspec.spec_of(isvc).get(name))
        if section:
            pods.append(_component_pod(isvc, section, name, name, admitted=False, first_name=podspec.MODEL_CONTAINER))
    return pods


def predictor_pod(isvc: JsonObject) -> dict[str, Any]:
    """The predictor pod KServe would create, before any webhook has touched it."""
    return _predictor_pod(isvc, predictor(isvc)).pod


def _predictor_pod(isvc: JsonObject, pred: JsonObject) -> ComponentPod:
    model, path = _model_section(pred)
    listed = list(_listed(pred, "predictor"))
    containers: list[tuple[str, dict[str, Any]]] = []
    if model is not None:
        containers.append((path, _model_container(model, runtime_of(isvc))))
    elif listed and listed[0][0].startswith("predictor.containers"):
        path0, first = listed.pop(0)
        containers.append((path0, {**first, "name": first.get("name") or podspec.MODEL_CONTAINER}))
    return _assemble(isvc, pred, "predictor", "predictor", containers, listed, admitted=True)


def _component_pod(
    isvc: JsonObject, section: JsonObject, component: str, label: str, *, admitted: bool, first_name: str
) -> ComponentPod:
    listed = list(_listed(section, component))
    containers: list[tuple[str, dict[str, Any]]] = []
    if listed and ".containers[" in listed[0][0]:
        path0, first = listed.pop(0)
        containers.append((path0, {**first, "name": first.get("name") or first_name}))
    return _assemble(isvc, section, component, label, containers, listed, admitted=admitted)


def _model_section(pred: JsonObject) -> tuple[JsonObject | None, str]:
    if isinstance(pred.get("model"), dict):
        return pred["model"], "predictor.model"
    for key in FRAMEWORK_KEYS:
        if isinstance(pred.get(key), dict):
            return pred[key], f"predictor.{key}"
    return None, ""


def _model_container(model: JsonObject, runtime: Runtime) -> dict[str, Any]:
    container = {k: v for k, v in model.items() if k not in MODEL_ONLY_KEYS}
    container["name"] = podspec.MODEL_CONTAINER
    if "image" not in container and runtime in RUNTIME_IMAGES:
        container["image"] = RUNTIME_IMAGES[runtime]
    return container


def _listed(section: JsonObject, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("containers", "initContainers"):
        for index, body in enumerate(podspec.sequence(section.get(kind))):
            yield f"{prefix}.{kind}[{index}]", dict(podspec.mapping(body))


def _assemble(
    isvc: JsonObject, section: JsonObject, component: str, label: str, app: list[tuple[str, dict[str, Any]]],
    listed: list[tuple[str, dict[str, Any]]], *, admitted: bool,
) -> ComponentPod:
    app += [(p, c) for p, c in listed if ".initContainers[" not in p]
    init = [(p, c) for p, c in listed if ".initContainers[" in p]
    spec: dict[str, Any] = {key: section[key] for key in POD_SPEC_KEYS if key in section}
    spec["containers"] = [c for _, c in app]
    if init:
        spec["initContainers"] = [c for _, c in init]
    paths = {f"container {str(c.get('name') or '')!r}": p for p, c in [*app, *init] if c.get("name")}
    paths["pod"] = f"{component} pod"
    metadata = podspec.mapping(isvc.get("metadata"))
    name = str(metadata.get("name") or "isvc")
    labels = {**podspec.labels_of(isvc), **_strings(section.get("labels")),
              podspec.ISVC_LABEL: name, podspec.COMPONENT_LABEL: label}
    annotations = {**podspec.annotations_of(isvc), **_strings(section.get("annotations"))}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": f"{name}-{component.replace('.workerSpec', '-worker')}-",
                     "labels": labels, "annotations": annotations},
        "spec": spec,
    }
    return ComponentPod(component, pod, paths, admitted)


def _strings(value: object) -> dict[str, str]:
    return {k: v for k, v in podspec.mapping(value).items() if isinstance(k, str) and isinstance(v, str)}

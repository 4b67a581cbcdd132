"""Which KServe workload a pod belongs to: its kind, its llm-d role, its place in a multi-node group, and the group.

gpuguard acts on the model-serving pods of two KServe kinds, and this module is where they are told apart from
everything else (so admission, rule matching, validation and the extender's group awareness all agree):

- **InferenceService** predictor pods: label `serving.kserve.io/inferenceservice` and `component: predictor` (or no
  component label). A multi-node predictor (`spec.predictor.workerSpec`) has a head and workers. KServe's controller
  (kserve/kserve pkg/controller/v1beta1/inferenceservice/components/predictor.go, `multiNodeProcess`) gives the head's
  `kserve-container` the env `TENSOR_PARALLEL_SIZE`, `PIPELINE_PARALLEL_SIZE`, `RAY_NODE_COUNT` and
  `REQUEST_GPU_COUNT` (names from pkg/constants/constants.go), and the workers run `worker-container` with
  `RAY_NODE_COUNT` in their own Deployment, whose pods carry `app: isvc.<predictor>-worker`
  (`GetRawWorkerServiceLabel`). A head is recognised by `RAY_NODE_COUNT` on its model container (KServe sets it only
  for multi-node predictors), a worker by `worker-container` or that `app` label; head and workers of one predictor
  are one group.
- **LLMInferenceService** workload pods (serving.kserve.io/v1alpha1; kserve/kserve pkg/controller/llmisvc/
  workload_single_node.go and workload_multi_node.go): labels `app.kubernetes.io/part-of: llminferenceservice`,
  `app.kubernetes.io/name: <object>`, `app.kubernetes.io/component: llminferenceservice-workload` (decode, or `both`
  without a prefill section), `-workload-prefill`, and for LeaderWorkerSet (multi-node) groups `-workload-leader`,
  `-workload-worker`, `-workload-leader-prefill`, `-workload-worker-prefill`; leaders (and single-node pods) also
  carry `llm-d.ai/role` (`decode`, `prefill`, `both`) and `kserve.io/component: workload`. The model container is
  `main`; the llm-d routing sidecar (`llm-d-routing-sidecar`) and init containers never get a GPU. The pods of one
  LeaderWorkerSet group share the label `leaderworkerset.sigs.k8s.io/group-key` (sigs.k8s.io/lws
  api/leaderworkerset/v1/leaderworkerset_types.go), stamped by the LWS pod webhook.

Pure: labels and container env in, a frozen value out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpuguard.policy import podspec
from gpuguard.policy.podspec import JsonObject

WorkloadKind = Literal["InferenceService", "LLMInferenceService"]
ISVC_KIND: WorkloadKind = "InferenceService"
LLMISVC_KIND: WorkloadKind = "LLMInferenceService"
LlmRole = Literal["prefill", "decode", "both"]
NodeRole = Literal["single", "leader", "worker"]
"""single: the whole model server in one pod; leader: the head of a multi-node group (an InferenceService's head, a
LeaderWorkerSet's leader); worker: the other pods of the group."""

PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF_LLMISVC = "llminferenceservice"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
ROLE_LABEL = "llm-d.ai/role"
LWS_GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
RAW_APP_LABEL = "app"
WORKER_SUFFIX = "-worker"
MAIN_CONTAINER = "main"
WORKER_CONTAINER = "worker-container"
ROUTING_SIDECAR = "llm-d-routing-sidecar"
TENSOR_PARALLEL_ENV = "TENSOR_PARALLEL_SIZE"
PIPELINE_PARALLEL_ENV = "PIPELINE_PARALLEL_SIZE"
RAY_NODE_COUNT_ENV = "RAY_NODE_COUNT"
REQUEST_GPU_COUNT_ENV = "REQUEST_GPU_COUNT"

WORKLOAD_COMPONENTS: dict[str, tuple[NodeRole, LlmRole]] = {
    "llminferenceservice-workload": ("single", "decode"),
    "llminferenceservice-workload-prefill": ("single", "prefill"),
    "llminferenceservice-workload-leader": ("leader", "decode"),
    "llminferenceservice-workload-worker": ("worker", "decode"),
    "llminferenceservice-workload-leader-prefill": ("leader", "prefill"),
    "llminferenceservice-workload-worker-prefill": ("worker", "prefill"),
    "llminferenceservice-workload-prefill-worker": ("worker", "prefill"),
}
"""`app.kubernetes.io/component` of every LLMInferenceService workload pod -> its place in a group and its default
llm-d role (the `llm-d.ai/role` label wins where present: a single-node pod without prefill is `both`). The last
name is the one earlier controller versions gave prefill workers."""
LLM_ROLES: frozenset[str] = frozenset({"prefill", "decode", "both"})


@dataclass(frozen=True, slots=True)
class Workload:
    """A pod's place in KServe."""

    kind: WorkloadKind
    name: str
    """The InferenceService or LLMInferenceService that owns it ("" when the label is missing)."""
    node_role: NodeRole = "single"
    role: str = ""
    """The llm-d role (prefill, decode, both); "" for InferenceService pods."""
    group: str = ""
    """The serving group it belongs to (`namespace/lws/<group-key>` or `namespace/isvc/<name>`), "" when single."""

    @property
    def multi_node(self) -> bool:
        return self.node_role != "single"


def workload_of(pod: JsonObject) -> Workload | None:
    """The workload of a pod gpuguard acts on; None for every other pod (transformers, explainers, routers...)."""
    labels = podspec.labels_of(pod)
    if podspec.ISVC_LABEL in labels:
        if labels.get(podspec.COMPONENT_LABEL, "predictor") != "predictor":
            return None
        return _isvc_workload(pod, labels)
    component = podspec.text(labels.get(COMPONENT_LABEL))  # a label value of the wrong type is no component
    if labels.get(PART_OF_LABEL) == PART_OF_LLMISVC and component in WORKLOAD_COMPONENTS:
        return _llmisvc_workload(pod, labels)
    return None


def _isvc_workload(pod: JsonObject, labels: JsonObject) -> Workload:
    name = podspec.text(labels.get(podspec.ISVC_LABEL)) or ""
    app = podspec.text(labels.get(RAW_APP_LABEL)) or ""
    spec = podspec.spec_of(pod)
    names = [podspec.mapping(c).get("name") for c in podspec.sequence(spec.get("containers"))]
    if WORKER_CONTAINER in names or (app.startswith("isvc.") and app.endswith(WORKER_SUFFIX)):
        role: NodeRole = "worker"
    elif _has_env(spec, podspec.MODEL_CONTAINER, RAY_NODE_COUNT_ENV):
        role = "leader"
    else:
        return Workload(ISVC_KIND, name)
    return Workload(ISVC_KIND, name, role, group=f"{_namespace(pod)}/isvc/{name}")


def _llmisvc_workload(pod: JsonObject, labels: JsonObject) -> Workload:
    node_role, default_role = WORKLOAD_COMPONENTS[str(labels[COMPONENT_LABEL])]
    given = podspec.text(labels.get(ROLE_LABEL))
    role = given if given in LLM_ROLES else default_role
    key = podspec.text(labels.get(LWS_GROUP_KEY_LABEL))
    group = f"{_namespace(pod)}/lws/{key}" if key and node_role != "single" else ""
    return Workload(LLMISVC_KIND, podspec.text(labels.get(NAME_LABEL)) or "", node_role, role or default_role, group)


def _namespace(pod: JsonObject) -> str:
    return str(podspec.mapping(pod.get("metadata")).get("namespace") or "")


def _has_env(spec: JsonObject, container: str, env: str) -> bool:
    for body in podspec.sequence(spec.get("containers")):
        body = podspec.mapping(body)
        if body.get("name") == container:
            return any(podspec.mapping(e).get("name") == env for e in podspec.sequence(body.get("env")))
    return False


def env_value(container: JsonObject, env: str) -> str | None:
    """A container's plain env value (None when absent or set from a reference)."""
    for entry in podspec.sequence(container.get("env")):
        entry = podspec.mapping(entry)
        if entry.get("name") == env:
            return podspec.text(entry.get("value"))
    return None


def group_of(pod: JsonObject) -> str:
    """The serving group a pod belongs to, "" when none: what the extender keeps a group's pods together by."""
    found = workload_of(pod)
    if found is not None and found.group:
        return found.group
    labels = podspec.labels_of(pod)
    key = podspec.text(labels.get(LWS_GROUP_KEY_LABEL))
    return f"{_namespace(pod)}/lws/{key}" if key else ""


def model_container_names(pod: JsonObject) -> tuple[str, ...]:
    """The names the pod's kind gives its model container (`main` for LLMInferenceService workloads)."""
    if podspec.labels_of(pod).get(PART_OF_LABEL) == PART_OF_LLMISVC:
        return (MAIN_CONTAINER,)
    return podspec.ISVC_MODEL_CONTAINERS


def model_container_of(pod: JsonObject) -> podspec.ContainerRef | None:
    """The pod's model container, by the names its kind uses."""
    return podspec.model_container(podspec.spec_of(pod), model_container_names(pod))

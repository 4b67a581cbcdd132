"""Multi-node serving groups: what every pod of one must agree on, and how KServe sizes a multi-node predictor.

A model sharded across nodes (tensor parallel inside a node, pipeline or data parallel across nodes) runs one rank
set per pod, and the runtime starts as many ranks per pod as its parallelism says, whatever the pod was given. So:
- **whole GPUs only**: a MIG slice, a time-sliced share or a KAI fraction cannot join NCCL collectives across nodes
  (kserve/kserve#4776: a multi-node predictor got `mig-1g.10gb` on one pod and `nvidia.com/gpu` on the other);
- **leader and workers equal**: every pod of the group holds the same number of whole GPUs;
- **GPUs per pod = the parallelism the spec states**: `workerSpec.tensorParallelSize` of an InferenceService, or
  `parallelism.tensor` (times `dataLocal` under data parallelism) of an LLMInferenceService, where the spec sets it;
- **one product**: the pods' GPU product selectors agree;
- **consistent totals**: an LLMInferenceService's `parallelism.data` is a multiple of `dataLocal` (KServe sizes the
  LeaderWorkerSet as data / dataLocal, rounded down), and a multi-node InferenceService's GPUs cover
  tensorParallelSize x pipelineParallelSize.

`kserve_sizing` is how KServe's controller turns a multi-node InferenceService into head and worker GPU counts and a
node count (kserve/kserve pkg/controller/v1beta1/inferenceservice/components/predictor.go, `computeRayNodeAndGPUs`:
total = tensor x pipeline; with worker GPUs set, nodes = ceil(total / worker) and the head takes the rest unless it
sets its own count; with only head GPUs set, the rest go to one-GPU workers; with neither, one GPU per node), so the
InferenceService check judges the pods KServe will really create. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpuguard.policy import podspec
from gpuguard.policy.demand import GpuDemand
from gpuguard.policy.podspec import JsonObject
from gpuguard.policy.quantity import whole_number
from gpuguard.policy.resolve import Problem
from gpuguard.policy.resources import WHOLE_GPU, resource_kind
from gpuguard.policy.workload import (
    PIPELINE_PARALLEL_ENV,
    RAY_NODE_COUNT_ENV,
    REQUEST_GPU_COUNT_ENV,
    TENSOR_PARALLEL_ENV,
    WORKER_CONTAINER,
    Workload,
)

SHARING_LABEL = "nvidia.com/gpu.sharing-strategy"
PRODUCT_LABEL = "nvidia.com/gpu.product"
SHARED_STRATEGIES = frozenset({"time-slicing", "mps"})
DEVICE_KINDS = frozenset({"whole", "vendor", "custom"})
WHOLE_FIX = ("give every pod of a multi-node group whole GPUs (nvidia.com/gpu: N, N the tensor-parallel size); MIG "
             "slices, time-sliced shares and fractions cannot join collectives across nodes")
MULTI_NODE = "multinode"


def pod_problems(demand: GpuDemand, workload: Workload, pod: JsonObject | None = None) -> list[Problem]:
    """What one pod of a multi-node group may not have: any GPU that is not whole."""
    found = [f"{name}: {n}" for name, n in demand.resources if resource_kind(name, demand.custom) in ("mig", "shared")]
    if demand.kai is not None:
        found.append("a KAI-Scheduler GPU fraction")
    selector = podspec.mapping(podspec.spec_of(pod or {}).get("nodeSelector"))
    if selector.get(SHARING_LABEL) in SHARED_STRATEGIES:
        found.append(f"{SHARING_LABEL}: {selector[SHARING_LABEL]}")
    if not found:
        return []
    message = f"this {workload.node_role} of a multi-node group gets {', '.join(found)}, not whole GPUs"
    return [Problem("pod", message, WHOLE_FIX, MULTI_NODE)]


_TENSOR = re.compile(r"(?:--tensor-parallel-size|(?<![\w-])-tp)(?:=|\s+)(\d{1,6})(?![\w.])")
_DATA_LOCAL = re.compile(r"(?:--data-parallel-size-local|(?<![\w-])-dpl)(?:=|\s+)(\d{1,6})(?![\w.])")
"""Six digits at most: a longer number is no rank count (and would not fit the int conversion's digit limit)."""


def stated_gpus(container: JsonObject) -> tuple[int, str] | None:
    """GPUs per pod the model server's own command line starts ranks for (vLLM's `--tensor-parallel-size` / `-tp`,
    times `--data-parallel-size-local` / `-dpl`), and how it says so; None when it does not say it as a number."""
    words = [str(w) for key in ("command", "args") for w in podspec.sequence(container.get(key))]
    text = " ".join(words)
    tensor = _TENSOR.findall(text)
    if not tensor:
        return None
    local = _DATA_LOCAL.findall(text)
    if local and int(local[-1]) > 1:
        return int(tensor[-1]) * int(local[-1]), f"--tensor-parallel-size {tensor[-1]} x --data-parallel-size-local {local[-1]}"
    return int(tensor[-1]), f"--tensor-parallel-size {tensor[-1]}"


def stated_problems(model: podspec.ContainerRef | None, demand: GpuDemand) -> list[Problem]:
    """The model container gets as many whole GPUs as its command line starts ranks for (the last flag wins, as in
    vLLM's argument parser)."""
    stated = stated_gpus(model.body) if model is not None else None
    held = device_count(demand)
    if model is None or stated is None or held is None or held == stated[0]:
        return []
    wanted, how = stated
    return [Problem(model.where, f"runs with {how} but the pod gets {held} GPUs", f"give it nvidia.com/gpu: {wanted} "
                    f"(a policy rule, or the gpuguard.io/gpu-count annotation where allowed), or start it with "
                    f"{held} ranks", MULTI_NODE)]


def device_count(demand: GpuDemand) -> int | None:
    """Whole devices the pod holds, None when it holds anything else (MIG, shares, fractions) or nothing."""
    kinds = {resource_kind(name, demand.custom) for name, _ in demand.resources}
    if not demand.resources or not kinds <= DEVICE_KINDS or demand.kai is not None:
        return None
    return sum(n for _, n in demand.resources)


@dataclass(frozen=True, slots=True)
class GroupPod:
    """One pod of a group as admission leaves it, named by the field of the object it comes from."""

    where: str
    """`spec.template`, `spec.worker`, `predictor.model`, `predictor.workerSpec`..."""
    gpus: int | None
    """Whole GPUs it holds (None: none, or not whole)."""
    product: str | None
    """Its `nvidia.com/gpu.product` node selector after admission."""


def group_pod(where: str, pod: JsonObject, demand: GpuDemand) -> GroupPod:
    selector = podspec.mapping(podspec.spec_of(pod).get("nodeSelector"))
    return GroupPod(where, device_count(demand), podspec.text(selector.get(PRODUCT_LABEL)))


@dataclass(frozen=True, slots=True)
class Parallelism:
    """The GPUs per pod the spec implies, and the field that says so."""

    per_pod: int
    field: str
    """`spec.parallelism.tensor`, `predictor.workerSpec.tensorParallelSize`..."""


def group_problems(pods: Sequence[GroupPod], *, multi_node: bool, parallelism: Parallelism | None) -> list[Problem]:
    """Leader and workers equal and on one product (multi-node only), each pod sized as the parallelism says."""
    found: list[Problem] = []
    if multi_node:
        found += _unequal(pods)
        found += _products(pods)
    if parallelism is not None:
        found += _sized(pods, parallelism)
    return found


def _unequal(pods: Sequence[GroupPod]) -> Iterable[Problem]:
    sized = [p for p in pods if p.gpus is not None]
    if len({p.gpus for p in sized}) <= 1:
        return []
    first, others = sized[0], [p for p in sized[1:] if p.gpus != sized[0].gpus]
    return [
        Problem(p.where, f"each pod gets {p.gpus} GPUs but {first.where} pods get {first.gpus}; every pod of a "
                f"multi-node group must hold the same whole GPUs",
                f"set the same nvidia.com/gpu count on {first.where} and {p.where}", MULTI_NODE)
        for p in others
    ]


def _products(pods: Sequence[GroupPod]) -> Iterable[Problem]:
    pinned = [p for p in pods if p.product]
    first = pinned[0] if pinned else None
    return [
        Problem(p.where, f"pins GPU product {p.product} but {first.where} pins {first.product}; a multi-node group "
                f"runs on one product", f"select the same {PRODUCT_LABEL} for {first.where} and {p.where}",
                MULTI_NODE)
        for p in pinned if first is not None and p.product != first.product
    ]


def _sized(pods: Sequence[GroupPod], parallelism: Parallelism) -> Iterable[Problem]:
    wanted = parallelism.per_pod
    return [
        Problem(p.where, f"each pod gets {p.gpus} GPUs but {parallelism.field} = {wanted} starts {wanted} GPU ranks "
                f"per pod", f"set nvidia.com/gpu: {wanted} on {p.where}, or change {parallelism.field} to match",
                MULTI_NODE)
        for p in pods if p.gpus is not None and p.gpus != wanted
    ]


# ------------------------------------------------------------------------------------------- KServe's InferenceService


@dataclass(frozen=True, slots=True)
class Sizing:
    """Head and worker GPUs of a multi-node InferenceService and its node count (head included)."""

    nodes: int
    head: int
    worker: int
    error: str = ""


def kserve_sizing(tensor: int, pipeline: int, *, head: int, worker: int) -> Sizing:
    """What KServe's controller gives a multi-node predictor, from the GPUs its head and worker ask for (0: unset)."""
    total = tensor * pipeline
    if worker > 0:
        nodes = -(-total // worker)
        if head > 0 and -(-total // head) == 1:
            nodes = 1
        elif head <= 0:
            head = total - worker * (nodes - 1)
        if nodes == 1:
            worker, head = 0, total
        return _checked(Sizing(nodes, head, worker), total)
    if head > 0:
        nodes = 1 + max(total - head, 0)
        return _checked(Sizing(nodes, head, 1), total)
    return Sizing(total, 1, 1)


def _checked(sizing: Sizing, total: int) -> Sizing:
    held = sizing.head + sizing.worker * (sizing.nodes - 1)
    if total <= held:
        return sizing
    error = f"tensor x pipeline parallel size needs {total} GPUs but head and workers hold {held}"
    return Sizing(sizing.nodes, sizing.head, sizing.worker, error)


def worker_sizes(worker_spec: JsonObject) -> tuple[int, int]:
    """tensorParallelSize and pipelineParallelSize of a workerSpec (KServe's default 1 each)."""
    def size(key: str) -> int:
        value = worker_spec.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
    return size("tensorParallelSize"), size("pipelineParallelSize")


def _container(pod: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in pod["spec"].get("containers", []) if isinstance(c, dict) and c.get("name") == name), None)


def whole_gpus(container: JsonObject | None) -> int:
    """The container's `nvidia.com/gpu` request, else its limit (what KServe reads), 0 when unset or unreadable."""
    if container is None:
        return 0
    resources = podspec.mapping(container.get("resources"))
    for section in ("requests", "limits"):
        value = podspec.mapping(resources.get(section)).get(WHOLE_GPU)
        if value is not None:
            return whole_number(value) or 0
    return 0


def _set_gpus(container: dict[str, Any], count: int) -> None:
    """KServe's `addGPUResourceToDeployment`: the GPU limit (and request, if the container has requests) set to count;
    left alone when the container asks for MIG or shares, or for a GPU quantity that is not a whole number, which
    validation refuses."""
    resources = container.setdefault("resources", {})
    if not isinstance(resources, dict):
        return  # not a ResourceRequirements: kube-apiserver refuses the object before KServe sees it
    sections = [podspec.mapping(resources.get("limits")), podspec.mapping(resources.get("requests"))]
    if any(resource_kind(n) in ("mig", "shared") for section in sections for n in section):
        return
    if any(whole_number(section[WHOLE_GPU]) is None for section in sections if WHOLE_GPU in section):
        return  # a quantity that is not a whole number stays for validation to refuse, never silently replaced
    for section in ("limits", "requests"):
        if section == "limits" or isinstance(resources.get(section), dict):
            resources[section] = {**podspec.mapping(resources.get(section)), WHOLE_GPU: str(count)}


def _add_env(container: dict[str, Any], values: dict[str, str]) -> None:
    env = [e for e in podspec.sequence(container.get("env")) if podspec.mapping(e).get("name") not in values]
    container["env"] = env + [{"name": k, "value": v} for k, v in values.items()]


def shape_isvc_group(worker_spec: JsonObject, head: dict[str, Any], worker: dict[str, Any]) -> Sizing:
    """Give a multi-node predictor's head and worker pods the GPUs and env KServe's controller gives them."""
    tensor, pipeline = worker_sizes(worker_spec)
    head_container = _container(head, podspec.MODEL_CONTAINER)
    worker_container = _container(worker, WORKER_CONTAINER)
    sizing = kserve_sizing(tensor, pipeline, head=whole_gpus(head_container), worker=whole_gpus(worker_container))
    nodes = str(sizing.nodes)
    if head_container is not None:
        _set_gpus(head_container, sizing.head)
        _add_env(head_container, {PIPELINE_PARALLEL_ENV: str(pipeline), TENSOR_PARALLEL_ENV: str(tensor),
                                  RAY_NODE_COUNT_ENV: nodes, REQUEST_GPU_COUNT_ENV: str(sizing.head)})
    if worker_container is not None:
        _set_gpus(worker_container, sizing.worker)
        _add_env(worker_container, {RAY_NODE_COUNT_ENV: nodes, REQUEST_GPU_COUNT_ENV: str(sizing.worker)})
    return sizing


def isvc_parallelism(worker_spec: JsonObject) -> Parallelism | None:
    """GPUs per pod a workerSpec states: its tensorParallelSize, where it sets one."""
    value = worker_spec.get("tensorParallelSize")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Parallelism(value, "predictor.workerSpec.tensorParallelSize")
    return None

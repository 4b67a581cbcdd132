"""Plan the changes gpuguard makes to an in-scope predictor pod, as RFC 6902 JSON Patch operations.

The plan is built directly from the few subtrees we touch (model container resources, tolerations, node selector and
affinity, schedulerName, annotations) instead of diffing the whole pod: `jsonpatch.make_patch` on a 4.6 KB pod costs
about ten times the rest of an admission request. Each path segment is escaped by `jsonpointer.escape` (RFC 6901: `~`
is `~0`, `/` is `~1`, so `prometheus.io/port` becomes `prometheus.io~1port`); a missing parent is added whole,
because JSON Patch cannot add a key under a map that does not exist.

What the pod already gets wins, read from its `GpuDemand`: a pod that gets a GPU through any channel (a GPU resource
on any container, a DRA claim, a KAI fraction, device visibility) is never given another, and an explicit 0 means no
GPU and no GPU placement. Pods whose GPUs something else hands out (DRA, KAI-Scheduler, HAMi, a listed scheduler) keep
their GPU fields and scheduler; `externallyManaged.mutation` says whether they still get the placement.

Placement for NVIDIA GPUs: the policy's tolerations, node selector and scheduler; whole GPUs additionally get a
required node-affinity term `nvidia.com/gpu.sharing-strategy NotIn [time-slicing, mps]` (which admits nodes without the
label) so they never land on a node whose `nvidia.com/gpu` are 1/N shares; time-sliced pods get the sharing-strategy
selector and their product as `In [P, P-SHARED]`, because GPU Feature Discovery renames the product there.

Idempotent: planning again on the patched pod yields no operations (the webhook is registered with
`reinvocationPolicy: IfNeeded`). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonpointer import escape

from gpuguard.policy import podspec
from gpuguard.policy.demand import GpuDemand
from gpuguard.policy.mig import base_product, mig_resource_name
from gpuguard.policy.model import GpuSpec, Toleration
from gpuguard.policy.podspec import ContainerRef, JsonObject
from gpuguard.policy.resolve import APPLIED_ANNOTATION, Effective
from gpuguard.policy.resources import SHARED_GPU, WHOLE_GPU
from gpuguard.policy.runtime import Runtime

PRODUCT_LABEL = "nvidia.com/gpu.product"
SHARING_STRATEGY_LABEL = "nvidia.com/gpu.sharing-strategy"
SHARED_STRATEGIES = ("time-slicing", "mps")
SHARED_PRODUCT_SUFFIX = "-SHARED"
KSERVE_SCRAPING_ANNOTATION = "serving.kserve.io/enable-prometheus-scraping"
KSERVE_AGGREGATION_ANNOTATION = "serving.kserve.io/enable-metric-aggregation"
KNATIVE_REVISION_LABEL = "serving.knative.dev/revision"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
QUEUE_PROXY = "queue-proxy"
DEFAULT_SCHEDULER = "default-scheduler"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"

Op = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MutationPlan:
    ops: tuple[Op, ...] = ()
    changes: tuple[str, ...] = ()
    """One human-readable line per change, for logs, the demo and `gpuguard mutate`."""
    warnings: tuple[str, ...] = ()


def pointer_key(key: str) -> str:
    """One JSON Pointer segment: `nvidia.com/gpu` -> `nvidia.com~1gpu` (RFC 6901, by jsonpointer)."""
    return escape(key)


@dataclass(slots=True)
class _Draft:
    ops: list[Op] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, value: Any, change: str, *, replace: bool = False) -> None:
        """Record one operation; `path` is a JSON Pointer whose user-supplied segments went through `pointer_key`."""
        self.ops.append({"op": "replace" if replace else "add", "path": path, "value": value})
        self.changes.append(change)

    def freeze(self) -> MutationPlan:
        return MutationPlan(tuple(self.ops), tuple(self.changes), tuple(dict.fromkeys(self.warnings)))


def gpu_resources(gpu: GpuSpec, *, rename_shared: bool) -> dict[str, str]:
    """The extended resources a GPU spec becomes, as limit quantities."""
    if gpu.mig_profile is not None:
        return {mig_resource_name(gpu.mig_profile): "1"}
    if gpu.sharing is not None:
        return {SHARED_GPU if rename_shared else WHOLE_GPU: "1"}
    return {WHOLE_GPU: str(gpu.count)} if gpu.count else {}


def plan_pod(pod: JsonObject, effective: Effective, *, runtime: Runtime, demand: GpuDemand) -> MutationPlan:
    """Everything gpuguard adds to this pod under these settings; empty if the pod already has it all."""
    draft = _Draft(warnings=[*effective.notes, *(f"ignored: {p}" for p in effective.problems)])
    pod_spec = podspec.spec_of(pod)
    model = podspec.model_container(pod_spec)
    if demand.owner:
        if effective.external.mutation == "placement" and demand.nvidia:
            _plan_placement(draft, pod_spec, effective, sharing=_sharing(effective, demand), whole=False)
        applied = f"stepped-aside: {demand.owner}"
    else:
        added = _plan_resources(draft, model, effective, demand)
        if added or demand.nvidia:
            whole = (added and effective.gpu.count is not None) or "whole" in demand.kinds
            _plan_placement(draft, pod_spec, effective, sharing=_sharing(effective, demand), whole=whole)
            _plan_scheduler(draft, pod_spec, effective.scheduler_name)
        applied = effective.rule
    if runtime == "triton" and effective.triton_metrics.enabled and (not demand.owner or effective.external.mutation != "none"):
        _plan_triton(draft, pod, model, effective)
    _plan_annotations(draft, pod, {APPLIED_ANNOTATION: applied})
    return draft.freeze()


def _sharing(effective: Effective, demand: GpuDemand) -> bool:
    return effective.gpu.sharing is not None or "shared" in demand.kinds


def _plan_resources(draft: _Draft, target: ContainerRef | None, effective: Effective, demand: GpuDemand) -> bool:
    """Give the model container its GPU unless the pod already gets one; True if a GPU was added."""
    wanted = gpu_resources(effective.gpu, rename_shared=effective.rename_shared)
    if target is not None and target.asks_for_gpu():
        _complete_limits(draft, target)
        return False
    if demand.gets_gpu:
        return False
    if target is None:
        if wanted:
            draft.warnings.append(f"no {podspec.MODEL_CONTAINER} container found: no GPU was added")
        return False
    if wanted:
        _add_limits(draft, target, wanted)
    return bool(wanted)


def _complete_limits(draft: _Draft, container: ContainerRef) -> None:
    """A GPU given only as a request gets the equal limit Kubernetes requires for extended resources."""
    missing = {k: v for k, v in container.gpu_requests().items() if k not in container.limits}
    if missing:
        _add_limits(draft, container, missing)


def _add_limits(draft: _Draft, container: ContainerRef, limits: Mapping[str, Any]) -> None:
    base = f"/spec/{container.kind}/{container.index}/resources"
    where = f"on {container.name}"
    if not isinstance(container.body.get("resources"), dict):
        draft.add(base, {"limits": dict(limits)}, f"limits {_pairs(limits)} {where}")
    elif not isinstance(container.body["resources"].get("limits"), dict):
        draft.add(f"{base}/limits", dict(limits), f"limits {_pairs(limits)} {where}")
    else:
        for key, value in limits.items():
            draft.add(f"{base}/limits/{pointer_key(key)}", value, f"limits {key}={value} {where}")


# ---------------------------------------------------------------------------------------------------------- placement


def _plan_placement(draft: _Draft, pod_spec: JsonObject, effective: Effective, *, sharing: bool, whole: bool) -> None:
    """Tolerations, node selector and the node-affinity terms for what kind of GPU node the pod needs."""
    _plan_tolerations(draft, pod_spec, effective.tolerations)
    selector = dict(effective.node_selector)
    expressions: list[dict[str, Any]] = []
    if sharing:
        selector[SHARING_STRATEGY_LABEL] = "time-slicing"
        product = selector.pop(PRODUCT_LABEL, None)
        if product is not None and PRODUCT_LABEL not in podspec.mapping(pod_spec.get("nodeSelector")):
            plain = base_product(product)
            expressions.append({"key": PRODUCT_LABEL, "operator": "In",
                                "values": [plain, plain + SHARED_PRODUCT_SUFFIX]})
    elif whole and SHARING_STRATEGY_LABEL not in podspec.mapping(pod_spec.get("nodeSelector")):
        expressions.append({"key": SHARING_STRATEGY_LABEL, "operator": "NotIn", "values": list(SHARED_STRATEGIES)})
    _plan_node_selector(draft, pod_spec, selector)
    _plan_affinity(draft, pod_spec, expressions)


def _plan_tolerations(draft: _Draft, pod_spec: JsonObject, wanted: Sequence[Toleration]) -> None:
    existing = [t for t in podspec.sequence(pod_spec.get("tolerations")) if isinstance(t, Mapping)]
    missing = [t.to_k8s() for t in wanted if not any(_covers(e, t) for e in existing)]
    if not missing:
        return
    labels = [f"toleration {t.get('key') or '*'}:{t.get('effect') or '*'}" for t in missing]
    if "tolerations" not in pod_spec or not isinstance(pod_spec["tolerations"], list):
        draft.add("/spec/tolerations", missing, ", ".join(labels))
        return
    for toleration, label in zip(missing, labels, strict=True):
        draft.add("/spec/tolerations/-", toleration, label)


def _covers(existing: Mapping[str, Any], wanted: Toleration) -> bool:
    """Whether a toleration already on the pod tolerates everything `wanted` would (so adding it is a duplicate)."""
    operator = existing.get("operator") or "Equal"
    key = existing.get("key") or ""
    if key != wanted.key and not (key == "" and operator == "Exists"):
        return False
    if operator != "Exists" and (wanted.operator == "Exists" or existing.get("value", "") != wanted.value):
        return False
    effect = existing.get("effect") or ""
    return effect in ("", wanted.effect)


def _plan_node_selector(draft: _Draft, pod_spec: JsonObject, wanted: Mapping[str, str]) -> None:
    existing = podspec.mapping(pod_spec.get("nodeSelector"))
    missing = {k: v for k, v in wanted.items() if k not in existing}
    for key, value in wanted.items():
        if key in existing and existing[key] != value:
            draft.warnings.append(f"kept nodeSelector {key}={existing[key]} set on the pod (policy says {value})")
    if not missing:
        return
    if not isinstance(pod_spec.get("nodeSelector"), dict):
        draft.add("/spec/nodeSelector", missing, f"nodeSelector {_pairs(missing)}")
        return
    for key, value in missing.items():
        draft.add(f"/spec/nodeSelector/{pointer_key(key)}", value, f"nodeSelector {key}={value}")


def _plan_affinity(draft: _Draft, pod_spec: JsonObject, wanted: Sequence[dict[str, Any]]) -> None:
    """AND `wanted` into every required node-selector term (terms are ORed), skipping keys a term already constrains."""
    if not wanted:
        return
    affinity = podspec.mapping(pod_spec.get("affinity"))
    node = podspec.mapping(affinity.get("nodeAffinity"))
    required = podspec.mapping(node.get(REQUIRED))
    terms = podspec.sequence(required.get("nodeSelectorTerms"))
    change = "required node affinity " + ", ".join(_expression_text(e) for e in wanted)
    fresh = {"nodeSelectorTerms": [{"matchExpressions": list(wanted)}]}
    if not isinstance(pod_spec.get("affinity"), dict):
        draft.add("/spec/affinity", {"nodeAffinity": {REQUIRED: fresh}}, change)
    elif not isinstance(affinity.get("nodeAffinity"), dict):
        draft.add("/spec/affinity/nodeAffinity", {REQUIRED: fresh}, change)
    elif not isinstance(node.get(REQUIRED), dict) or not terms:
        draft.add(f"/spec/affinity/nodeAffinity/{REQUIRED}", fresh, change, replace=REQUIRED in node)
    else:
        for index, term in enumerate(terms):
            _extend_term(draft, f"/spec/affinity/nodeAffinity/{REQUIRED}/nodeSelectorTerms/{index}",
                         podspec.mapping(term), wanted)


def _extend_term(draft: _Draft, path: str, term: JsonObject, wanted: Sequence[dict[str, Any]]) -> None:
    present = {podspec.mapping(e).get("key") for e in podspec.sequence(term.get("matchExpressions"))}
    missing = [e for e in wanted if e["key"] not in present]
    if not missing:
        return
    change = "required node affinity " + ", ".join(_expression_text(e) for e in missing)
    if not isinstance(term.get("matchExpressions"), list):
        draft.add(f"{path}/matchExpressions", missing, change)
        return
    for expression in missing:
        draft.add(f"{path}/matchExpressions/-", expression, f"required node affinity {_expression_text(expression)}")


def _expression_text(expression: Mapping[str, Any]) -> str:
    return f"{expression['key']} {expression['operator']} [{', '.join(expression['values'])}]"


def _plan_scheduler(draft: _Draft, pod_spec: JsonObject, scheduler: str) -> None:
    current = pod_spec.get("schedulerName") or ""
    if not scheduler or current == scheduler:
        return
    if current not in ("", DEFAULT_SCHEDULER):
        draft.warnings.append(f"kept schedulerName {current} set on the pod (policy says {scheduler})")
        return
    draft.add("/spec/schedulerName", scheduler, f"schedulerName {scheduler}", replace="schedulerName" in pod_spec)


# ------------------------------------------------------------------------------------------------------------- Triton

_METRICS_PORT = re.compile(r"^--metrics-port(?:=(?P<value>.*))?$")
_ALLOW_METRICS = re.compile(r"^--allow-metrics(?:=(?P<value>.*))?$")


def _flag(words: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    """The value of a `--flag=value` or `--flag value` command-line option, last one wins as in Triton."""
    found: str | None = None
    for index, word in enumerate(words):
        match = pattern.match(word)
        if match is None:
            continue
        value = match["value"]
        if value is None and index + 1 < len(words):
            value = words[index + 1]
        found = value
    return found


def knative(pod: JsonObject) -> bool:
    """A Knative (Serverless) pod: it has a queue-proxy, a revision label, or says so in its deployment mode."""
    containers = podspec.sequence(podspec.spec_of(pod).get("containers"))
    if any(podspec.mapping(c).get("name") == QUEUE_PROXY for c in containers):
        return True
    if KNATIVE_REVISION_LABEL in podspec.labels_of(pod):
        return True
    return podspec.annotations_of(pod).get(DEPLOYMENT_MODE_ANNOTATION) in ("Serverless", "Knative")


def _plan_triton(draft: _Draft, pod: JsonObject, container: ContainerRef | None, effective: Effective) -> None:
    """Triton's metrics port and path in the annotations that make Prometheus scrape it in this pod's mode.

    KServe's pod mutator (pkg/webhook/admission/pod/metrics_aggregate_injector.go) owns `prometheus.io/port` and
    `/path` whenever `serving.kserve.io/enable-prometheus-scraping` is "true" and rewrites them on every invocation:
    to queue-proxy's own metrics port 9091, or to 9088 when `serving.kserve.io/enable-metric-aggregation` is "true",
    where queue-proxy (KServe's qpext image) merges in the model server's metrics from `prometheus.kserve.io/port` and
    `/path`. So in that mode we set only the `prometheus.kserve.io/*` pair, and say when Triton's metrics would still
    not be scraped: without aggregation, and in Standard mode, which has no queue-proxy at all. Otherwise we point
    `prometheus.io/*` at Triton directly, which works in both modes.
    """
    words = [] if container is None else [str(w) for w in (*podspec.sequence(container.body.get("command")),
                                                            *podspec.sequence(container.body.get("args")))]
    if (_flag(words, _ALLOW_METRICS) or "true").lower() == "false":
        draft.warnings.append("Triton runs with --allow-metrics=false: no Prometheus annotations were added")
        return
    port = _flag(words, _METRICS_PORT) or str(effective.triton_metrics.port)
    path = effective.triton_metrics.path
    existing = podspec.annotations_of(pod)
    if existing.get(KSERVE_SCRAPING_ANNOTATION) != "true":
        wanted = {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": path}
    else:
        wanted = {"prometheus.kserve.io/port": port, "prometheus.kserve.io/path": path}
        if not knative(pod):
            draft.warnings.append(
                f"Triton's metrics on :{port} are not scraped: in Standard mode {KSERVE_SCRAPING_ANNOTATION} points "
                "prometheus.io/port at queue-proxy, which these pods do not have; remove that annotation (gpuguard then "
                f"points prometheus.io/* at Triton) or scrape port {port} with a PodMonitor"
            )
        elif existing.get(KSERVE_AGGREGATION_ANNOTATION) == "true":
            wanted["prometheus.io/scrape"] = "true"
        else:
            draft.warnings.append(
                f"Triton's metrics on :{port} are not scraped: KServe points prometheus.io/port at queue-proxy's own "
                f"metrics; set {KSERVE_AGGREGATION_ANNOTATION}: \"true\" on the InferenceService (with KServe's "
                "queue-proxy extension image) to merge them in"
            )
    draft.annotations.update({k: v for k, v in wanted.items() if k not in existing})


def _plan_annotations(draft: _Draft, pod: JsonObject, always: Mapping[str, str]) -> None:
    existing = podspec.annotations_of(pod)
    wanted = {**draft.annotations, **{k: v for k, v in always.items() if existing.get(k) != v}}
    if not wanted:
        return
    metadata = podspec.mapping(pod.get("metadata"))
    if not isinstance(metadata.get("annotations"), dict):
        draft.add("/metadata/annotations", wanted, f"annotations {_pairs(wanted)}")
        return
    for key, value in wanted.items():
        draft.add(f"/metadata/annotations/{pointer_key(key)}", value, f"annotation {key}={value}")


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())

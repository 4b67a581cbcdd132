"""Plan the changes gpuguard makes to an in-scope predictor pod, as RFC 6902 JSON Patch operations.

The plan is built directly from the few subtrees we touch (model container resources, tolerations, node selector,
schedulerName, annotations) instead of diffing the whole pod: `jsonpatch.make_patch` on a 4.6 KB pod costs about
ten times the rest of an admission request. Each path segment is escaped by `jsonpointer.escape` (RFC 6901: `~` is
`~0`, `/` is `~1`, so `prometheus.io/port` becomes `prometheus.io~1port`); a missing parent map is added whole,
because JSON Patch cannot add a key under a map that does not exist.

What the user wrote wins: an explicit GPU resource, node selector value, toleration or scheduler is kept, so the
plan is idempotent (planning again on the patched pod yields no operations; the webhook is registered with
`reinvocationPolicy: IfNeeded`). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonpointer import escape

from gpuguard.policy import podspec
from gpuguard.policy.mig import mig_resource_name
from gpuguard.policy.model import GpuSpec, Toleration
from gpuguard.policy.podspec import ContainerRef, JsonObject
from gpuguard.policy.resolve import APPLIED_ANNOTATION, Effective
from gpuguard.policy.runtime import Runtime

SHARING_STRATEGY_LABEL = "nvidia.com/gpu.sharing-strategy"
KSERVE_SCRAPING_ANNOTATION = "serving.kserve.io/enable-prometheus-scraping"
DEFAULT_SCHEDULER = "default-scheduler"

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
        return MutationPlan(tuple(self.ops), tuple(self.changes), tuple(self.warnings))


def gpu_resources(gpu: GpuSpec, *, rename_shared: bool) -> dict[str, str]:
    """The extended resources a GPU spec becomes, as limit quantities."""
    if gpu.mig_profile is not None:
        return {mig_resource_name(gpu.mig_profile): "1"}
    if gpu.sharing is not None:
        return {podspec.SHARED_GPU if rename_shared else podspec.WHOLE_GPU: "1"}
    return {podspec.WHOLE_GPU: str(gpu.count)} if gpu.count else {}


def plan_pod(pod: JsonObject, effective: Effective, *, runtime: Runtime) -> MutationPlan:
    """Everything gpuguard adds to this pod under these settings; empty if the pod already has it all."""
    draft = _Draft(warnings=list(effective.notes))
    pod_spec = podspec.spec_of(pod)
    model = podspec.model_container(pod_spec)
    added_gpu = _plan_resources(draft, model, effective)
    gpu_pod = added_gpu or podspec.pod_asks_for_gpu(pod_spec)
    if gpu_pod:
        _plan_tolerations(draft, pod_spec, effective.tolerations)
        _plan_node_selector(draft, pod_spec, _node_selector(effective))
        _plan_scheduler(draft, pod_spec, effective.scheduler_name)
    if runtime == "triton" and effective.triton_metrics.enabled:
        _plan_triton(draft, pod, model, effective)
    _plan_annotations(draft, pod, {APPLIED_ANNOTATION: effective.rule})
    return draft.freeze()


def _node_selector(effective: Effective) -> Mapping[str, str]:
    if effective.gpu.sharing is None:
        return effective.node_selector
    return {**effective.node_selector, SHARING_STRATEGY_LABEL: "time-slicing"}


def _plan_resources(draft: _Draft, target: ContainerRef | None, effective: Effective) -> bool:
    """Give the model container its GPU unless it already names one; True if a GPU was added."""
    wanted = gpu_resources(effective.gpu, rename_shared=effective.rename_shared)
    if target is None:
        if wanted:
            draft.warnings.append(f"no {podspec.MODEL_CONTAINER} container found: no GPU was added")
        return False
    if target.asks_for_gpu():
        _complete_limits(draft, target)
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


def _plan_scheduler(draft: _Draft, pod_spec: JsonObject, scheduler: str) -> None:
    current = pod_spec.get("schedulerName") or ""
    if not scheduler or current == scheduler:
        return
    if current not in ("", DEFAULT_SCHEDULER):
        draft.warnings.append(f"kept schedulerName {current} set on the pod (policy says {scheduler})")
        return
    draft.add("/spec/schedulerName", scheduler, f"schedulerName {scheduler}", replace="schedulerName" in pod_spec)


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


def _plan_triton(draft: _Draft, pod: JsonObject, container: ContainerRef | None, effective: Effective) -> None:
    words = [] if container is None else [str(w) for w in (*podspec.sequence(container.body.get("command")),
                                                            *podspec.sequence(container.body.get("args")))]
    if (_flag(words, _ALLOW_METRICS) or "true").lower() == "false":
        draft.warnings.append("Triton runs with --allow-metrics=false: no Prometheus annotations were added")
        return
    port = _flag(words, _METRICS_PORT) or str(effective.triton_metrics.port)
    path = effective.triton_metrics.path
    if podspec.annotations_of(pod).get(KSERVE_SCRAPING_ANNOTATION) == "true":
        # KServe owns prometheus.io/* in this mode and rewrites it on every (re)invocation; it reads these instead.
        wanted = {"prometheus.kserve.io/port": port, "prometheus.kserve.io/path": path}
    else:
        wanted = {"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": path}
    existing = podspec.annotations_of(pod)
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

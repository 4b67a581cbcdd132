"""Judge a KServe `serving.kserve.io` LLMInferenceService by the workload pods its controller will create.

Like the InferenceService check (`gpuguard.policy.inferenceservice`), this must predict what the pods' admission will
decide, so it builds each pod the way KServe's LLMInferenceService controller does (kserve/kserve
pkg/controller/llmisvc/workload_single_node.go and workload_multi_node.go) and sends it through the pod steps:
- without `worker`: one Deployment per section, its pods from `template` (component `llminferenceservice-workload`,
  llm-d role `decode`, or `both` when there is no `prefill` section; prefill: `-workload-prefill`, role `prefill`);
- with `worker`: a LeaderWorkerSet whose leader comes from `template` (component `-workload-leader[-prefill]`) and
  whose workers come from `worker` (`-workload-worker[-prefill]`; they carry the role only when there is no
  template); its size is `parallelism.pipeline`, or `parallelism.data / dataLocal` under data parallelism.
KServe copies only CNI annotations onto the pods, so none of the object's annotations (gpuguard.io/* included)
reach them, and none are used here. A section without `template` or `worker` takes them from the
LLMInferenceServiceConfig it references (`baseRefs`), which admission of the object cannot see: nothing is judged for
it here, and its pods are still judged when they are created.

On top of each pod's own rules, every section is checked as a group (`gpuguard.policy.multinode`): whole GPUs only
across nodes, leader and workers equal and on one product, each pod holding `parallelism.tensor` GPUs (times
`dataLocal` under data parallelism) where the spec sets it, and `data` a multiple of `dataLocal`. Problems name the
object's field (`spec.worker.containers[0]`, `spec.prefill.parallelism.tensor`). Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gpuguard.policy import multinode, podspec, workload
from gpuguard.policy.admission import admit
from gpuguard.policy.inferenceservice import ComponentPod, Verdict, renamed
from gpuguard.policy.model import Policy
from gpuguard.policy.podspec import JsonObject
from gpuguard.policy.quantity import whole_number
from gpuguard.policy.resolve import DEFAULTS_RULE, Problem

GROUP = "serving.kserve.io"
KIND = "LLMInferenceService"
VERSIONS = ("v1alpha1", "v1alpha2")


@dataclass(frozen=True, slots=True)
class Section:
    """The decode (`spec`) or prefill (`spec.prefill`) part of the object."""

    prefix: str
    body: JsonObject
    prefill: bool


def sections(obj: JsonObject) -> list[Section]:
    spec = podspec.spec_of(obj)
    found = [Section("spec", spec, prefill=False)]
    prefill = podspec.mapping(spec.get("prefill"))
    if prefill:
        found.append(Section("spec.prefill", prefill, prefill=True))
    return found


def judge(obj: JsonObject, policy: Policy, *, namespace: str) -> Verdict:
    """What admission will decide for each workload pod, plus each section's group rules."""
    found: list[Problem] = []
    changes: list[str] = []
    warnings: list[str] = []
    rule, skip, first = DEFAULTS_RULE, False, True
    has_prefill = len(sections(obj)) > 1
    for section in sections(obj):
        members: list[multinode.GroupPod] = []
        for built in section_pods(obj, section, has_prefill=has_prefill):
            admission = admit(built.pod, policy, namespace=namespace)
            if first:
                rule, skip, first = admission.view.effective.rule, admission.view.effective.skip, False
            component = built.pod["metadata"]["labels"][workload.COMPONENT_LABEL]
            changes += [f"{component} pods get: {change}" for change in admission.plan.changes]
            warnings += admission.plan.warnings
            found += [renamed(p, built) for p in admission.problems]
            where = built.paths.get(f"container {workload.MAIN_CONTAINER!r}", built.component)
            members.append(multinode.group_pod(where, admission.pod, admission.view.demand))
        multi = bool(podspec.mapping(section.body.get("worker")))
        found += multinode.group_problems(members, multi_node=multi, parallelism=parallelism(section))
        found += list(_data_problems(section))
    return Verdict(rule, skip, tuple(dict.fromkeys(found)), (), tuple(changes), tuple(dict.fromkeys(warnings)))


# ---------------------------------------------------------------------------------------------------- parallelism


def _int(section: Section, key: str) -> int | None:
    value = podspec.mapping(section.body.get("parallelism")).get(key)
    return whole_number(value) if isinstance(value, int) and not isinstance(value, bool) else None


def parallelism(section: Section) -> multinode.Parallelism | None:
    """GPUs per pod the section states: `tensor`, times `dataLocal` under data parallelism; None when unset."""
    tensor = _int(section, "tensor")
    if not tensor:
        return None
    field = f"{section.prefix}.parallelism.tensor"
    local = _int(section, "dataLocal") or 0
    if local > 1:
        return multinode.Parallelism(tensor * local, f"{field} x dataLocal ({tensor} x {local})")
    return multinode.Parallelism(tensor, field)


def _data_problems(section: Section) -> Iterator[Problem]:
    data, local = _int(section, "data") or 0, _int(section, "dataLocal") or 0
    if data > 0 and local > 0 and data % local:
        where = f"{section.prefix}.parallelism.data"
        yield Problem(where, f"{data} is not a multiple of dataLocal {local}: KServe starts {max(data // local, 1)} "
                      f"pods of {local} ranks, {data - max(data // local, 1) * local} ranks short",
                      f"make data a multiple of dataLocal (e.g. {-(-data // local) * local})", multinode.MULTI_NODE)


# ---------------------------------------------------------------------------------------------------- building pods


def section_pods(obj: JsonObject, section: Section, *, has_prefill: bool) -> list[ComponentPod]:
    """The pods KServe creates for one section, as gpuguard's pod admission will see them."""
    template = podspec.mapping(section.body.get("template"))
    worker = podspec.mapping(section.body.get("worker"))
    suffix = "-prefill" if section.prefill else ""
    role = "prefill" if section.prefill else ("decode" if has_prefill else "both")
    if not worker:
        component = "llminferenceservice-workload" + suffix
        return [_pod(obj, template, f"{section.prefix}.template", component, role)] if template else []
    pods = []
    if template:
        pods.append(_pod(obj, template, f"{section.prefix}.template", f"llminferenceservice-workload-leader{suffix}",
                         role))
    worker_role = "" if template else role
    pods.append(_pod(obj, worker, f"{section.prefix}.worker", f"llminferenceservice-workload-worker{suffix}",
                     worker_role))
    return pods


def _pod(obj: JsonObject, pod_spec: JsonObject, path: str, component: str, role: str) -> ComponentPod:
    metadata = podspec.mapping(obj.get("metadata"))
    name = str(metadata.get("name") or "llmisvc")
    labels = {workload.COMPONENT_LABEL: component, workload.NAME_LABEL: name,
              workload.PART_OF_LABEL: workload.PART_OF_LLMISVC}
    if role:
        labels |= {"kserve.io/component": "workload", workload.ROLE_LABEL: role}
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": f"{name}-kserve-", "labels": labels},
        "spec": copy.deepcopy(dict(pod_spec)),
    }
    paths = {"pod": f"{path} pods"}
    for kind in ("containers", "initContainers"):
        for index, body in enumerate(podspec.sequence(pod_spec.get(kind))):
            body_name = podspec.mapping(body).get("name")
            if body_name:
                paths[f"container {str(body_name)!r}"] = f"{path}.{kind}[{index}]"
    return ComponentPod(path, pod, paths, admitted=True)


def workload_pods(obj: JsonObject) -> list[dict[str, Any]]:
    """Every pod this object's sections define, before any webhook touched them."""
    has_prefill = len(sections(obj)) > 1
    return [built.pod for s in sections(obj) for built in section_pods(obj, s, has_prefill=has_prefill)]

"""One pod through gpuguard's admission, as pure steps: resolve its settings, read its GPU demand, plan the mutation,
apply it, judge the result.

The webhook's /mutate and /validate, the InferenceService check (which builds the pods KServe will create and runs
them through here) and the offline `gpuguard mutate`/`validate` all call these, so what `kubectl apply` of an
InferenceService is told is exactly what its pods will be told. Pure: JSON in, values out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from gpuguard.policy import multinode, podspec
from gpuguard.policy.claim_templates import known_claim_specs
from gpuguard.policy.demand import GpuDemand
from gpuguard.policy.model import Policy
from gpuguard.policy.mutation import MutationPlan, plan_pod
from gpuguard.policy.podspec import JsonObject
from gpuguard.policy.resolve import Effective, Problem, resolve
from gpuguard.policy.runtime import Runtime, runtime_of_container
from gpuguard.policy.validation import pod_demand_under, pod_problems
from gpuguard.policy.workload import Workload, model_container_of, workload_of


@dataclass(frozen=True, slots=True)
class PodView:
    """What gpuguard knows about one pod: the settings that apply, its runtime and its GPU demand."""

    effective: Effective
    runtime: Runtime
    demand: GpuDemand
    workload: Workload | None = None
    """The KServe workload the pod belongs to (None for pods outside KServe's)."""
    templates: Mapping[str, JsonObject] = field(default_factory=dict)
    """The ResourceClaimTemplates whose content is known (gpuguard's own in this namespace), when the pod has
    claims: validation judges the claims made from them."""


def view(pod: JsonObject, policy: Policy, *, namespace: str) -> PodView:
    runtime = pod_runtime(pod)
    found = workload_of(pod)
    effective = resolve(
        policy, namespace=namespace, runtime=runtime, labels=podspec.labels_of(pod),
        annotations=podspec.annotations_of(pod), workload=found,
    )
    claims = podspec.sequence(podspec.spec_of(pod).get("resourceClaims"))
    templates = known_claim_specs(policy, namespace) if claims else {}
    return PodView(effective, runtime, pod_demand_under(pod, effective), found, templates)


def pod_runtime(pod: JsonObject) -> Runtime:
    container = model_container_of(pod)
    return runtime_of_container(container.body) if container is not None else "custom"


def plan(pod: JsonObject, seen: PodView) -> MutationPlan:
    return plan_pod(pod, seen.effective, runtime=seen.runtime, demand=seen.demand)


def problems(pod: JsonObject, seen: PodView) -> list[Problem]:
    found = pod_problems(pod, seen.effective, seen.demand, seen.templates)
    counts_left_to_owner = bool(seen.demand.owner) and seen.effective.external.validation == "deviceAccess"
    if seen.workload is not None and not counts_left_to_owner:
        found += multinode.stated_problems(model_container_of(pod), seen.demand)
        if seen.workload.multi_node:
            found += multinode.pod_problems(seen.demand, seen.workload, pod)
    return found


def apply(pod: JsonObject, mutation: MutationPlan) -> dict[str, Any]:
    """The pod as kube-apiserver stores it after the plan's JSON Patch."""
    original = copy.deepcopy(dict(pod))
    return jsonpatch.apply_patch(original, list(mutation.ops)) if mutation.ops else original


@dataclass(frozen=True, slots=True)
class Admission:
    """A pod through /mutate then /validate: the plan, the stored pod, and the problems validation finds in it."""

    view: PodView
    plan: MutationPlan
    pod: dict[str, Any]
    problems: tuple[Problem, ...]


def admit(pod: JsonObject, policy: Policy, *, namespace: str) -> Admission:
    """Mutation then validation of the mutated pod, as kube-apiserver calls the two webhooks."""
    before = view(pod, policy, namespace=namespace)
    if before.effective.skip:
        return Admission(before, MutationPlan(), dict(pod), ())
    mutation = plan(pod, before)
    stored = apply(pod, mutation)
    after = view(stored, policy, namespace=namespace)
    return Admission(after, mutation, stored, tuple(problems(stored, after)))

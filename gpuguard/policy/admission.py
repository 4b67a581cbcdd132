"""One pod through gpuguard's admission, as pure steps: resolve its settings, read its GPU demand, plan the mutation,
apply it, judge the result.

The webhook's /mutate and /validate, the InferenceService check (which builds the pods KServe will create and runs
them through here) and the offline `gpuguard mutate`/`validate` all call these, so what `kubectl apply` of an
InferenceService is told is exactly what its pods will be told. Pure: JSON in, values out.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import jsonpatch

from gpuguard.policy import podspec
from gpuguard.policy.demand import GpuDemand
from gpuguard.policy.model import Policy
from gpuguard.policy.mutation import MutationPlan, plan_pod
from gpuguard.policy.podspec import JsonObject
from gpuguard.policy.resolve import Effective, Problem, resolve
from gpuguard.policy.runtime import Runtime, runtime_of_container
from gpuguard.policy.validation import pod_demand_under, pod_problems


@dataclass(frozen=True, slots=True)
class PodView:
    """What gpuguard knows about one pod: the settings that apply, its runtime and its GPU demand."""

    effective: Effective
    runtime: Runtime
    demand: GpuDemand


def view(pod: JsonObject, policy: Policy, *, namespace: str) -> PodView:
    runtime = pod_runtime(pod)
    effective = resolve(
        policy, namespace=namespace, runtime=runtime, labels=podspec.labels_of(pod),
        annotations=podspec.annotations_of(pod),
    )
    return PodView(effective, runtime, pod_demand_under(pod, effective))


def pod_runtime(pod: JsonObject) -> Runtime:
    container = podspec.model_container(podspec.spec_of(pod))
    return runtime_of_container(container.body) if container is not None else "custom"


def plan(pod: JsonObject, seen: PodView) -> MutationPlan:
    return plan_pod(pod, seen.effective, runtime=seen.runtime, demand=seen.demand)


def problems(pod: JsonObject, seen: PodView) -> list[Problem]:
    return pod_problems(pod, seen.effective, seen.demand)


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

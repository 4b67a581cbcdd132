"""From a policy and one object's context to the settings that apply to it.

Order of precedence, most specific last: policy defaults, then the first matching rule (it replaces each defaults
key it sets), then the user's `gpuguard.io/*` annotations where `userOverrides` allows them. Mode and limits come
from the namespace overrides. The result also carries the annotation problems found on the way, so validation can
refuse a bad override and mutation can ignore it. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.loading import PRODUCT_LABEL, unknown_profile_message
from gpuguard.policy.model import (
    ExternallyManaged,
    GpuSpec,
    Limits,
    Mode,
    Policy,
    Rule,
    Toleration,
    TritonMetrics,
    UserOverride,
)
from gpuguard.policy.quantity import quoted, whole_number
from gpuguard.policy.runtime import Runtime
from gpuguard.policy.suggest import close_matches

ANNOTATION_PREFIX = "gpuguard.io/"
APPLIED_ANNOTATION = "gpuguard.io/applied"
SKIP_ANNOTATION = "gpuguard.io/skip"
OVERRIDE_ANNOTATIONS: Mapping[UserOverride, str] = {
    "gpu-count": "gpuguard.io/gpu-count",
    "mig-profile": "gpuguard.io/mig-profile",
    "gpu-product": "gpuguard.io/gpu-product",
    "sharing": "gpuguard.io/sharing",
    "skip": SKIP_ANNOTATION,
}
DEFAULTS_RULE = "defaults"
KNOWN_ANNOTATIONS = frozenset({*OVERRIDE_ANNOTATIONS.values(), APPLIED_ANNOTATION})


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with an object, phrased for the person who wrote it: what, where, and how to fix it."""

    where: str
    """`container 'kserve-container'`, `annotation gpuguard.io/gpu-count`, `predictor.model`."""
    message: str
    fix: str
    code: str = "policy"
    """What kind of problem: `quantity` for what kube-apiserver itself also refuses in a pod (extended resources that
    are not whole numbers, requests that differ from limits), `policy` for what only gpuguard refuses."""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}. Fix: {self.fix}"


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings that apply to one object."""

    rule: str
    mode: Mode
    limits: Limits
    gpu: GpuSpec
    tolerations: tuple[Toleration, ...]
    node_selector: Mapping[str, str]
    scheduler_name: str
    triton_metrics: TritonMetrics
    rename_shared: bool
    skip: bool = False
    problems: tuple[Problem, ...] = ()
    """Invalid user annotations: validation refuses them, mutation ignores them."""
    notes: tuple[str, ...] = field(default=())
    """Annotations that were ignored: not allowed by policy, or not gpuguard's (misspelt)."""
    gpu_types: frozenset[str] = frozenset()
    """The policy's extra GPU resource types (`gpuResourceTypes`)."""
    external: ExternallyManaged = ExternallyManaged()
    catalog: MigCatalog = mig.BUILTIN
    """The policy's MIG catalog, which the profile checks resolve models and profiles through."""


def namespace_mode_and_limits(policy: Policy, namespace: str) -> tuple[Mode, Limits]:
    """An exact namespace key wins; otherwise the first glob in file order that matches."""
    override = policy.namespaces.get(namespace)
    if override is None:
        override = next((o for glob, o in policy.namespaces.items() if fnmatchcase(namespace, glob)), None)
    if override is None:
        return policy.mode, policy.limits
    limits = policy.limits
    if override.limits is not None:
        changed = override.limits.model_dump(exclude_none=True)
        limits = limits.model_copy(update=changed)
    return override.mode or policy.mode, limits


def matching_rule(policy: Policy, *, namespace: str, runtime: Runtime, labels: Mapping[str, Any]) -> Rule | None:
    return next((r for r in policy.rules if _rule_matches(r, namespace, runtime, labels)), None)


def _rule_matches(rule: Rule, namespace: str, runtime: Runtime, labels: Mapping[str, Any]) -> bool:
    match = rule.match
    if match.namespaces and not any(fnmatchcase(namespace, glob) for glob in match.namespaces):
        return False
    if match.runtimes and runtime not in match.runtimes:
        return False
    return all(labels.get(key) == value for key, value in match.labels.items())


def resolve(
    policy: Policy,
    *,
    namespace: str,
    runtime: Runtime,
    labels: Mapping[str, Any],
    annotations: Mapping[str, Any],
) -> Effective:
    """The settings for an object in `namespace` running `runtime` with these labels and annotations."""
    mode, limits = namespace_mode_and_limits(policy, namespace)
    rule = matching_rule(policy, namespace=namespace, runtime=runtime, labels=labels)
    base = policy.defaults
    gpu = rule.gpu if rule and rule.gpu is not None else base.gpu
    node_selector = rule.node_selector if rule and rule.node_selector is not None else base.node_selector
    overrides = _user_overrides(policy.user_overrides, annotations, limits, policy.catalog)
    if overrides.product is not None:
        node_selector = {**node_selector, PRODUCT_LABEL: overrides.product}
    return Effective(
        rule=rule.name if rule else DEFAULTS_RULE,
        mode=mode,
        limits=limits,
        gpu=overrides.gpu or gpu,
        tolerations=rule.tolerations if rule and rule.tolerations is not None else base.tolerations,
        node_selector=node_selector,
        scheduler_name=rule.scheduler_name if rule and rule.scheduler_name is not None else base.scheduler_name,
        triton_metrics=rule.triton_metrics if rule and rule.triton_metrics is not None else base.triton_metrics,
        rename_shared=policy.time_slicing.rename_by_default,
        skip=overrides.skip,
        problems=tuple(overrides.problems),
        notes=tuple(overrides.notes),
        gpu_types=frozenset(policy.gpu_resource_types),
        external=policy.externally_managed,
        catalog=policy.catalog,
    )


@dataclass(slots=True)
class _Overrides:
    gpu: GpuSpec | None = None
    product: str | None = None
    skip: bool = False
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _user_overrides(
    allowed: tuple[UserOverride, ...], annotations: Mapping[str, Any], limits: Limits, catalog: MigCatalog
) -> _Overrides:
    """What the user's gpuguard.io/* annotations ask for, where policy lets them; problems for bad values."""
    found = _Overrides()
    if not any(key.startswith(ANNOTATION_PREFIX) for key in annotations):
        return found  # the common case, kept cheap
    found.notes += _unknown_annotation_notes(annotations)
    given = {kind: str(annotations[key]) for kind, key in OVERRIDE_ANNOTATIONS.items() if key in annotations}
    for kind in [k for k in given if k not in allowed]:
        found.notes.append(
            f"annotation {OVERRIDE_ANNOTATIONS[kind]} ignored: the GPU policy does not let users set it "
            f"(ask the cluster admin to add {kind!r} to userOverrides)"
        )
        del given[kind]
    gpu_choices = [k for k in ("gpu-count", "mig-profile", "sharing") if k in given]
    if len(gpu_choices) > 1:
        names = ", ".join(OVERRIDE_ANNOTATIONS[k] for k in gpu_choices)
        found.problems.append(Problem(f"annotations {names}", "conflict", "set only one of them"))
    elif gpu_choices:
        found.gpu = _gpu_from_annotation(gpu_choices[0], given[gpu_choices[0]], limits, found.problems, catalog)
    found.product = given.get("gpu-product")
    found.skip = given.get("skip", "").lower() == "true"
    return found


def _unknown_annotation_notes(annotations: Mapping[str, Any]) -> list[str]:
    """A `gpuguard.io/*` key gpuguard does not read is almost always a typo; say so, with the likely key."""
    notes = []
    for key in annotations:
        if key.startswith(ANNOTATION_PREFIX) and key not in KNOWN_ANNOTATIONS:
            close = close_matches(key, sorted(KNOWN_ANNOTATIONS))
            hint = f"; did you mean {close[0]}?" if close else f"; gpuguard reads {', '.join(sorted(KNOWN_ANNOTATIONS))}"
            notes.append(f"annotation {quoted(key)} is not one gpuguard reads and was ignored{hint}")
    return notes


def _gpu_from_annotation(
    kind: str, value: str, limits: Limits, problems: list[Problem], catalog: MigCatalog
) -> GpuSpec | None:
    where = f"annotation {OVERRIDE_ANNOTATIONS[kind]}"  # type: ignore[index]  # kind is one of the GPU overrides
    if kind == "gpu-count":
        count = whole_number(value)
        if count is None or count < 1:
            problems.append(Problem(where, f"{quoted(value)} is not a whole number of GPUs", "write a count such as \"1\""))
            return None
        if count > limits.max_gpus_per_pod:
            problems.append(
                Problem(where, f"{count} GPUs exceeds the limit of {limits.max_gpus_per_pod} per pod",
                        f"ask for at most {limits.max_gpus_per_pod}, or use a MIG profile")
            )
            return None
        return GpuSpec(count=count)
    if kind == "mig-profile":
        return _mig_from_annotation(where, value, limits, problems, catalog)
    if value != "time-slicing":
        problems.append(Problem(where, f"{quoted(value)} is not a sharing mode", "write \"time-slicing\""))
        return None
    return GpuSpec(sharing="timeSlicing")


def _mig_from_annotation(
    where: str, value: str, limits: Limits, problems: list[Problem], catalog: MigCatalog
) -> GpuSpec | None:
    if not catalog.knows(value):
        problems.append(Problem(where, unknown_profile_message(value, catalog), "use one of the known profiles"))
        return None
    if limits.allowed_mig_profiles and value not in limits.allowed_mig_profiles:
        allowed = ", ".join(limits.allowed_mig_profiles)
        problems.append(Problem(where, f"MIG profile {quoted(value)} is not allowed here", f"use one of: {allowed}"))
        return None
    return GpuSpec(mig_profile=value)


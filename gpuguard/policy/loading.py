"""Turn policy text into a `Policy`, or into every error it contains, each with its field path and the fix.

`gpuguard policy check`, the services' reload loop and the chart tests all go through `parse_policy`, so an admin sees
the same message wherever a policy is refused: `rules[1].gpu.migProfile: unknown MIG profile '1g.11gb'; known: ...`.
Schema errors come from pydantic (the `migCatalog` entries included: they follow the schema of the shipped catalog
file); rules that need the MIG catalog (profiles that exist, that a rule's product offers, that the limits allow) are
checked here after the schema passes, against the policy's own catalog (`Policy.catalog`: the shipped one plus
`migCatalog`). Pure: callers read files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog, profile_size_gb
from gpuguard.policy.model import GpuSpec, Limits, Policy
from gpuguard.policy.quantity import quoted

PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(ValueError):
    """A policy that must not be used; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def default_policy_text() -> str:
    """The embedded default policy (DESIGN.md's v1 example), used when no --policy is given."""
    return resources.files("gpuguard.policy").joinpath("default-policy.yaml").read_text(encoding="utf-8")


def default_policy() -> Policy:
    return parse_policy(default_policy_text())


def parse_policy(text: str) -> Policy:
    """Parse YAML (or JSON) policy text; raise `PolicyError` listing every problem."""
    document = _load_yaml(text)
    try:
        policy = Policy.model_validate(document)
    except ValidationError as error:
        raise PolicyError([_issue_from_pydantic(detail) for detail in error.errors()]) from None
    issues = list(semantic_issues(policy))
    if issues:
        raise PolicyError(issues)
    return policy


def _load_yaml(text: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise PolicyError([PolicyIssue("", f"not valid YAML: {where}{problem}")]) from None
    if document is None:
        raise PolicyError([PolicyIssue("", "the policy is empty; start from the example in the README")])
    if not isinstance(document, dict):
        raise PolicyError([PolicyIssue("", f"the policy must be a mapping, got {type(document).__name__}")])
    return document


def _issue_from_pydantic(detail: ErrorDetails) -> PolicyIssue:
    path = format_path(detail["loc"])
    kind = detail["type"]
    if kind == "extra_forbidden":
        return PolicyIssue(path, "unknown field; check its spelling against the policy v1 schema in the README")
    if kind == "missing":
        return PolicyIssue(path, "required field is missing")
    if path == "apiVersion" and kind == "literal_error":
        return PolicyIssue(path, f"unsupported version {detail['input']!r}; this gpuguard reads gpuguard.io/v1")
    message = detail["msg"].removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error"):
        message = f"{message} (got {detail['input']!r})"
    return PolicyIssue(path, message)


def format_path(loc: Sequence[int | str]) -> str:
    """('rules', 1, 'gpu', 'migProfile') -> 'rules[1].gpu.migProfile'; keys with dots or globs are quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.replace("-", "").replace("_", "").isalnum():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def semantic_issues(policy: Policy) -> Iterator[PolicyIssue]:
    """Cross-field rules: catalog membership, limits, unique rule names."""
    catalog = policy.catalog
    yield from _allowed_profile_issues("limits.allowedMigProfiles", policy.limits.allowed_mig_profiles, catalog)
    for namespace, override in policy.namespaces.items():
        if override.limits is not None and override.limits.allowed_mig_profiles is not None:
            path = format_path(("namespaces", namespace, "limits", "allowedMigProfiles"))
            yield from _allowed_profile_issues(path, override.limits.allowed_mig_profiles, catalog)
    yield from _gpu_issues("defaults.gpu", policy.defaults.gpu, policy.limits, policy.defaults.node_selector, catalog)
    seen: set[str] = set()
    for index, rule in enumerate(policy.rules):
        if rule.name in seen:
            yield PolicyIssue(f"rules[{index}].name", f"duplicate rule name {rule.name!r}; rule names must be unique")
        seen.add(rule.name)
        if rule.gpu is not None:
            selector = rule.node_selector if rule.node_selector is not None else policy.defaults.node_selector
            yield from _gpu_issues(f"rules[{index}].gpu", rule.gpu, policy.limits, selector, catalog)


def _allowed_profile_issues(path: str, profiles: Sequence[str], catalog: MigCatalog) -> Iterator[PolicyIssue]:
    for index, profile in enumerate(profiles):
        if not catalog.knows(profile):
            yield PolicyIssue(f"{path}[{index}]", unknown_profile_message(profile, catalog))


def _gpu_issues(
    path: str, gpu: GpuSpec, limits: Limits, node_selector: dict[str, str], catalog: MigCatalog
) -> Iterator[PolicyIssue]:
    if gpu.count is not None and gpu.count > limits.max_gpus_per_pod:
        yield PolicyIssue(
            f"{path}.count",
            f"{gpu.count} GPUs exceeds limits.maxGpusPerPod ({limits.max_gpus_per_pod}); lower it or raise the limit",
        )
    if gpu.sharing is not None and not limits.allow_time_slicing:
        yield PolicyIssue(f"{path}.sharing", "time-slicing is disabled by limits.allowTimeSlicing; set it to true")
    if gpu.mig_profile is not None:
        product = node_selector.get(PRODUCT_LABEL)
        yield from _profile_issues(f"{path}.migProfile", gpu.mig_profile, limits, product, catalog)


def _profile_issues(
    path: str, profile: str, limits: Limits, product: str | None, catalog: MigCatalog
) -> Iterator[PolicyIssue]:
    model = catalog.model_for_product(product) if product else None
    if model is None and not catalog.knows(profile):
        yield PolicyIssue(path, unknown_profile_message(profile, catalog))
        return
    if limits.allowed_mig_profiles and profile not in limits.allowed_mig_profiles:
        allowed = ", ".join(limits.allowed_mig_profiles)
        yield PolicyIssue(path, f"{profile!r} is not in limits.allowedMigProfiles ({allowed}); add it there")
    if model is not None and model.profile(profile) is None:
        yield PolicyIssue(
            path,
            f"{profile!r} does not exist on {product} ({model.name}); it offers {', '.join(model.profile_names)}",
        )


NEAREST = 5
"""How many known profiles an unknown-profile message suggests."""


def unknown_profile_message(profile: str, catalog: MigCatalog = mig.BUILTIN) -> str:
    """What to say about a profile no model in the catalog offers: the nearest known ones, and how to add a GPU."""
    return (
        f"unknown MIG profile {quoted(profile)}: no GPU model in gpuguard's catalog offers it; the nearest known "
        f"profiles are {', '.join(_nearest(profile, catalog))}. For a GPU newer than this gpuguard, add its model "
        "and profiles to the policy under migCatalog.models (see the README)"
    )


def _nearest(profile: str, catalog: MigCatalog) -> list[str]:
    """Known profiles with the same compute slices, closest in memory first (all profiles if none match)."""
    compute, gb = profile_size_gb(profile) or (0, 0)
    sizes = {name: profile_size_gb(name) or (0, 0) for name in catalog.profile_names}
    same = [name for name, size in sizes.items() if size[0] == compute] or list(sizes)
    return sorted(same, key=lambda name: (abs(sizes[name][1] - gb), name))[:NEAREST]

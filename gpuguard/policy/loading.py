"""Turn policy text into a `Policy`, or into every error it contains, each with its field path and the fix.

`gpuguard policy check`, the services' reload loop and the chart tests all go through `parse_policy`, so an admin sees
the same message wherever a policy is refused: `rules[1].gpu.migProfile: unknown MIG profile '1g.11gb'; known: ...`.
Schema errors come from pydantic (the `migCatalog` entries included: they follow the schema of the shipped catalog
file); rules that need the MIG catalog (profiles that exist, that a rule's product offers, that the limits allow) are
checked here against the policy's own catalog (`Policy.catalog`: the shipped one plus `migCatalog`), on whatever part
of the file passes the schema (`gpuguard.policy.pruning`), so one run reports both kinds. Each problem carries the
line and column of its field (`gpuguard.policy.positions`). Pure: callers read files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import yaml
from pydantic_core import ErrorDetails

from gpuguard.policy import mig, schema
from gpuguard.policy.catalog import MigCatalog, profile_size_gb
from gpuguard.policy.model import GpuSpec, Limits, Policy
from gpuguard.policy.positions import Positions, parse_path
from gpuguard.policy.pruning import salvage
from gpuguard.policy.quantity import quoted
from gpuguard.policy.suggest import did_you_mean

PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    path: str
    message: str
    line: int | None = None
    """Where `path` is in the policy text, counted from 1; None when unknown."""
    column: int | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (line {self.line}, column {self.column})" if self.line is not None else text


class PolicyError(ValueError):
    """A policy that must not be used; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def default_policy_text() -> str:
    """The embedded default policy (also `examples/policy.yaml`), used when no --policy is given."""
    return resources.files("gpuguard.policy").joinpath("default-policy.yaml").read_text(encoding="utf-8")


def default_policy() -> Policy:
    return parse_policy(default_policy_text())


def parse_policy(text: str) -> Policy:
    """Parse YAML (or JSON) policy text; raise `PolicyError` listing every problem, in the order of the text."""
    document = _load_yaml(text)
    loaded = salvage(document, Policy)
    issues = [_issue_from_pydantic(detail) for detail in loaded.errors]
    if loaded.model is not None:
        for issue in semantic_issues(loaded.model):
            path = loaded.relocate(issue.path, issue.message, path_of=format_path)
            issues += [replace(issue, path=path)] if path is not None else []
    if issues or loaded.model is None:
        raise PolicyError(_located(text, issues))
    return loaded.model


def _located(text: str, issues: Sequence[PolicyIssue]) -> list[PolicyIssue]:
    positions = Positions(text)
    located = []
    for issue in issues:
        position = positions.of(parse_path(issue.path)) if issue.line is None else None
        located.append(replace(issue, line=position[0], column=position[1]) if position else issue)
    return sorted(located, key=lambda issue: (issue.line or 0, issue.column or 0))


def _load_yaml(text: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyError([PolicyIssue("", yaml_error_text(error))]) from None
    if document is None:
        raise PolicyError([PolicyIssue("", "the policy is empty; start from examples/policy.yaml (docs/policy.md)")])
    if not isinstance(document, dict):
        raise PolicyError([PolicyIssue("", f"the policy must be a mapping, got {type(document).__name__}")])
    return document


def yaml_error_text(error: yaml.YAMLError) -> str:
    """`not valid YAML: line 3, column 7: mapping values are not allowed here`."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML: {where}{getattr(error, 'problem', None) or error}"


def _issue_from_pydantic(detail: ErrorDetails) -> PolicyIssue:
    path = format_path(detail["loc"])
    kind = detail["type"]
    if kind == "extra_forbidden":
        return PolicyIssue(path, unknown_key_message(detail["loc"]))
    if kind == "missing":
        return PolicyIssue(path, "required field is missing")
    if path == "apiVersion" and kind == "literal_error":
        return PolicyIssue(path, f"unsupported version {detail['input']!r}; this gpuguard reads gpuguard.io/v1")
    message = detail["msg"].removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error"):
        message = f"{message} (got {detail['input']!r})"
    if kind == "literal_error":
        message += did_you_mean(detail["input"], schema.choices_at(detail["loc"]))
    if kind == "string_pattern_mismatch":
        message += _name_hint(detail["input"], str(detail.get("ctx", {}).get("pattern", "")))
    return PolicyIssue(path, message)


def _name_hint(value: object, pattern: str) -> str:
    """`"; did you mean 'small-models'?"` for a name the pattern refuses only for its case, spaces or symbols."""
    if not isinstance(value, str) or not pattern:
        return ""
    candidate = re.sub(r"[^a-z0-9.]+", "-", value.lower()).strip("-.")
    return f"; did you mean {candidate!r}?" if candidate != value and re.fullmatch(pattern, candidate) else ""


def unknown_key_message(loc: Sequence[int | str]) -> str:
    """`unknown field 'modes'; did you mean 'mode'?`, else the keys that section takes."""
    key, known = str(loc[-1]), schema.keys_at(loc[:-1])
    suggestion = did_you_mean(key, known)
    if suggestion or not known:
        return f"unknown field {key!r}{suggestion}"
    return f"unknown field {key!r}; this section takes: {', '.join(known)} (docs/policy-reference.md)"


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
    """What to say about a profile no model in the catalog offers: the one it probably meant, the nearest known ones,
    and how to add a GPU."""
    nearest = _nearest(profile, catalog)
    if profile_size_gb(profile) is not None:
        meant = f"; did you mean {nearest[0]!r}?" if nearest else "."
    else:
        meant = did_you_mean(profile, catalog.profile_names) or "."
    return (
        f"unknown MIG profile {quoted(profile)}: no GPU model in gpuguard's catalog offers it{meant} The nearest known "
        f"profiles are {', '.join(nearest)}. For a GPU newer than this gpuguard, add its model and profiles to the "
        "policy under migCatalog.models (docs/policy.md)"
    )


def _nearest(profile: str, catalog: MigCatalog) -> list[str]:
    """Known profiles with the same compute slices, closest in memory first (all profiles if none match)."""
    compute, gb = profile_size_gb(profile) or (0, 0)
    sizes = {name: profile_size_gb(name) or (0, 0) for name in catalog.profile_names}
    same = [name for name, size in sizes.items() if size[0] == compute] or list(sizes)
    return sorted(same, key=lambda name: (abs(sizes[name][1] - gb), name))[:NEAREST]

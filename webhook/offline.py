"""`gpuguard mutate -f` and `gpuguard validate -f`: the webhook's decisions on manifests, with no cluster.

Both commands examine each object once (`examine`), through the webhook's own review functions: a Pod goes through
/mutate then /validate exactly as kube-apiserver calls them (validation judges the mutated pod); an InferenceService
through /validate, which builds the pods KServe will create and admits them, so the output says what its pods will
get. They differ only in how they print the result, so `mutate` shows every warning and refusal `validate` gives.
Objects gpuguard does not admit (other kinds, other API versions, pods outside KServe predictors, opted-out objects)
are reported as skipped, never as passing.

Exit status (both commands): 0 when every object is admitted (skipped ones included), 1 when the webhook would deny
at least one, 2 when an input or the policy cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jsonpatch
import yaml

from gpuguard.contracts.admission import AdmissionRequest, decode_patch
from gpuguard.policy import inferenceservice, podspec
from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy
from gpuguard.policy.model import Policy
from gpuguard.policy.resolve import Problem
from webhook.manifests import Manifest, ManifestError, read_all
from webhook.review import mutate, validate

EXIT_ADMITTED, EXIT_DENIED, EXIT_UNUSABLE = 0, 1, 2

POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
POD_RESOURCE = {"group": "", "version": "v1", "resource": "pods"}
ISVC_API_VERSION = f"{inferenceservice.GROUP}/v1beta1"
ISVC_KIND = {"group": inferenceservice.GROUP, "version": "v1beta1", "kind": inferenceservice.KIND}
ISVC_RESOURCE = {"group": inferenceservice.GROUP, "version": "v1beta1", "resource": "inferenceservices"}

Decision = Literal["admitted", "denied", "warned", "audited", "skipped"]
DECISIONS: tuple[Decision, ...] = ("admitted", "denied", "warned", "audited", "skipped")
_FROM_REVIEW: dict[str, Decision] = {"allowed": "admitted", "patched": "admitted", "denied": "denied",
                                     "warned": "warned", "audited": "audited"}


@dataclass(frozen=True, slots=True)
class Checked:
    """One object through gpuguard's admission: the decision, what changes, what it is told, and the object after."""

    manifest: Manifest
    decision: Decision
    obj: dict[str, Any]
    rule: str = ""
    reason: str = ""
    """Why a skipped object was not checked."""
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def kind(self) -> str:
        return str(self.manifest.obj.get("kind"))

    @property
    def api_version(self) -> str:
        return str(self.manifest.obj.get("apiVersion") or "")

    def name(self, namespace: str) -> str:
        """`namespace/name`, or `namespace/generateName*`."""
        metadata = podspec.mapping(self.manifest.obj.get("metadata"))
        name = metadata.get("name") or f"{metadata.get('generateName', '')}*"
        return f"{_namespace(self.manifest.obj, namespace)}/{name}"

    @property
    def messages(self) -> list[str]:
        """Everything the user is told about this object: mutation warnings, then what validation refuses."""
        return [*self.warnings, *(str(problem) for problem in self.problems)]


# ------------------------------------------------------------------------------------------------------- deciding


def examine(manifest: Manifest, policy: Policy, *, namespace: str) -> Checked:
    """The webhook's decision on one object. Pure: the same review functions the server runs."""
    obj, kind = manifest.obj, manifest.obj.get("kind")
    if kind == "Pod" and obj.get("apiVersion") == "v1":
        return _examine_pod(manifest, policy, namespace=namespace)
    if kind == inferenceservice.KIND and obj.get("apiVersion") == ISVC_API_VERSION:
        return _examine_isvc(manifest, policy, namespace=namespace)
    return Checked(manifest, "skipped", obj, reason=skip_reason(obj))


def skip_reason(obj: dict[str, Any]) -> str:
    """Why gpuguard's webhook never sees an object of this kind and version."""
    kind, api_version = obj.get("kind"), str(obj.get("apiVersion") or "(no apiVersion)")
    if kind in (inferenceservice.KIND, "KFService"):
        return (f"{api_version} {kind} is not checked: gpuguard admits {ISVC_API_VERSION} InferenceServices "
                "(the version KServe serves); convert it to that version")
    return f"not checked: gpuguard admits v1 Pods and {ISVC_API_VERSION} InferenceServices, not {api_version} {kind}"


def _examine_pod(manifest: Manifest, policy: Policy, *, namespace: str) -> Checked:
    pod = manifest.obj
    request = _request(pod, namespace, POD_KIND, POD_RESOURCE)
    mutated = mutate(request, policy)
    if mutated.decision == "ignored":
        reason = (f"not a KServe predictor pod (no {podspec.ISVC_LABEL} label, or a component other than "
                  "predictor): the webhook admits it unchanged")
        return Checked(manifest, "skipped", pod, reason=reason)
    if mutated.decision == "skipped":
        return Checked(manifest, "skipped", pod, mutated.rule, reason='opted out with gpuguard.io/skip: "true"')
    patched = jsonpatch.apply_patch(pod, decode_patch(mutated.response)) if mutated.response.patch else pod
    verdict = validate(request.model_copy(update={"object": patched}), policy)
    return Checked(manifest, _FROM_REVIEW[verdict.decision], patched, verdict.rule, changes=mutated.changes,
                   warnings=_unrepeated(mutated.response.warnings or (), verdict.problems), problems=verdict.problems)


def _examine_isvc(manifest: Manifest, policy: Policy, *, namespace: str) -> Checked:
    isvc = manifest.obj
    outcome = validate(_request(isvc, namespace, ISVC_KIND, ISVC_RESOURCE), policy)
    if outcome.decision == "skipped":
        return Checked(manifest, "skipped", isvc, outcome.rule, reason='opted out with gpuguard.io/skip: "true"')
    pods = inferenceservice.judge(isvc, policy, namespace=_namespace(isvc, namespace))
    warnings = _unrepeated([*pods.mutation_warnings, *pods.warnings], outcome.problems)
    return Checked(manifest, _FROM_REVIEW[outcome.decision], isvc, outcome.rule, changes=pods.changes,
                   warnings=warnings, problems=outcome.problems)


def _unrepeated(warnings: Sequence[str], problems: Sequence[Problem]) -> tuple[str, ...]:
    """The warnings, less mutation's `ignored: <problem>` for a problem validation reports itself."""
    reported = [f"{problem.message}. Fix: {problem.fix}" for problem in problems]
    return tuple(dict.fromkeys(
        w for w in warnings if not (w.startswith("ignored: ") and any(w.endswith(r) for r in reported))
    ))


def exit_code(checked: list[Checked]) -> int:
    return EXIT_DENIED if any(c.decision == "denied" for c in checked) else EXIT_ADMITTED


def summary(checked: list[Checked]) -> str:
    """`6 objects: 4 admitted, 1 denied, 1 skipped`."""
    counts = Counter(c.decision for c in checked)
    parts = [f"{counts[d]} {d}" for d in DECISIONS if counts[d]]
    return f"{len(checked)} object{'s' if len(checked) != 1 else ''}: {', '.join(parts)}"


# ------------------------------------------------------------------------------------------------------- printing

LABELS: dict[Decision, str] = {"admitted": "ok", "denied": "DENIED", "warned": "WARN", "audited": "AUDIT",
                               "skipped": "skip"}


def headline(checked: Checked, namespace: str) -> str:
    """`InferenceService models/tiny-bert (rule defaults)`, or `... : why it was skipped`."""
    text = f"{checked.kind} {checked.name(namespace)}"
    if checked.decision == "skipped":
        return f"{text}: {checked.reason}"
    return f"{text} (rule {checked.rule})" if checked.rule else text


def validate_text(checked: list[Checked], namespace: str) -> str:
    lines = []
    for item in checked:
        lines.append(f"{LABELS[item.decision]:<7}{headline(item, namespace)}")
        lines += [f"       ! {warning}" for warning in item.warnings]
        lines += [f"       - {problem}" for problem in item.problems]
    return "\n".join([*lines, summary(checked)]) + "\n"


def mutate_yaml(checked: list[Checked], namespace: str) -> str:
    out = []
    for item in checked:
        header = [f"# gpuguard: {LABELS[item.decision]} {headline(item, namespace)}"]
        header += [f"#   + {change}" for change in item.changes] or ["#   (no changes)"]
        header += [f"#   ! {warning}" for warning in item.warnings]
        header += [f"#   - {problem}" for problem in item.problems]
        out.append("\n".join(header) + "\n" + yaml.safe_dump(item.obj, sort_keys=False))
    return "---\n".join(out) + f"# gpuguard: {summary(checked)}\n"


def report(checked: list[Checked], namespace: str, *, objects: bool) -> dict[str, Any]:
    """The `-o json` document: one entry per object (with the admitted object for `mutate`) and the counts."""
    items = []
    for item in checked:
        entry: dict[str, Any] = {
            "source": item.manifest.source, "document": item.manifest.document,
            "apiVersion": item.api_version, "kind": item.kind,
            "namespace": _namespace(item.manifest.obj, namespace), "name": item.name(namespace).split("/", 1)[1],
            "decision": item.decision, "rule": item.rule, "reason": item.reason,
            "changes": list(item.changes), "warnings": list(item.warnings),
            "problems": [{"where": p.where, "message": p.message, "fix": p.fix, "code": p.code}
                         for p in item.problems],
            "messages": item.messages,
        }
        if objects:
            entry["object"] = item.obj
        items.append(entry)
    counts = Counter(c.decision for c in checked)
    return {"items": items, "summary": {"objects": len(checked), **{d: counts[d] for d in DECISIONS}},
            "exitCode": exit_code(checked)}


# ------------------------------------------------------------------------------------------------------- commands


def mutate_command(args: argparse.Namespace) -> int:
    return _run(args, lambda checked: mutate_yaml(checked, args.namespace), objects=True)


def validate_command(args: argparse.Namespace) -> int:
    return _run(args, lambda checked: validate_text(checked, args.namespace), objects=False)


def _run(args: argparse.Namespace, render: Callable[[list[Checked]], str], *, objects: bool) -> int:
    loaded = _load(args)
    if loaded is None:
        return EXIT_UNUSABLE
    manifests, policy = loaded
    checked = [examine(manifest, policy, namespace=args.namespace) for manifest in manifests]
    if args.output == "json":
        sys.stdout.write(json.dumps(report(checked, args.namespace, objects=objects), indent=2) + "\n")
    else:
        sys.stdout.write(render(checked))
    return exit_code(checked)


def _load(args: argparse.Namespace) -> tuple[list[Manifest], Policy] | None:
    try:
        policy_text = args.policy.read_text(encoding="utf-8") if args.policy else default_policy_text()
        policy = parse_policy(policy_text)
        return read_all(args.filename), policy
    except OSError as error:
        print(f"gpuguard: cannot read the policy {args.policy}: {error.strerror or error}", file=sys.stderr)
    except PolicyError as error:
        print(f"gpuguard: the policy {args.policy} is invalid:\n{error}", file=sys.stderr)
    except ManifestError as error:
        print(f"gpuguard: {error}", file=sys.stderr)
    return None


def _request(obj: dict[str, Any], namespace: str, kind: dict[str, str], resource: dict[str, str]) -> AdmissionRequest:
    return AdmissionRequest.model_validate(
        {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "name": podspec.mapping(obj.get("metadata")).get("name", ""),
            "namespace": _namespace(obj, namespace),
            "operation": "CREATE",
            "object": obj,
        }
    )


def _namespace(obj: dict[str, Any], default: str) -> str:
    return str(podspec.mapping(obj.get("metadata")).get("namespace") or default)


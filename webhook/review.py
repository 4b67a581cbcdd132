"""The admission decision: an AdmissionRequest and a policy in, an AdmissionResponse out. Pure.

`/mutate` fills in what an in-scope predictor pod is missing (GPU on the model container, tolerations, node
selector, scheduler, Triton scrape annotations, `gpuguard.io/applied`). `/validate` checks the result, and
InferenceService objects on CREATE/UPDATE, and denies, warns or only counts per the namespace's mode. Mutation never
denies: kube-apiserver calls validating webhooks after every mutation, so that is where the final pod is judged.
Anything we do not handle (other kinds, UPDATE of pods, DELETE, pods outside KServe predictors) is allowed
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gpuguard.contracts.admission import AdmissionRequest, AdmissionResponse, allow, deny
from gpuguard.policy import admission, inferenceservice, podspec
from gpuguard.policy.model import Mode, Policy
from gpuguard.policy.podspec import JsonObject
from gpuguard.policy.resolve import Problem, namespace_mode_and_limits

Decision = Literal["ignored", "skipped", "allowed", "patched", "denied", "warned", "audited"]
VIOLATIONS_AUDIT_KEY = "gpuguard.io/violations"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The response plus what the server logs and counts about it."""

    response: AdmissionResponse
    decision: Decision
    kind: str
    rule: str = ""
    changes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()


def mutate(request: AdmissionRequest, policy: Policy) -> Outcome:
    pod = _pod_in_scope(request)
    if pod is None:
        return _ignored(request)
    seen = admission.view(pod, policy, namespace=namespace_of(request))
    if seen.effective.skip:
        return Outcome(allow(request.uid), "skipped", "Pod", seen.effective.rule)
    plan = admission.plan(pod, seen)
    response = allow(request.uid, ops=plan.ops, warnings=plan.warnings)
    return Outcome(response, "patched" if plan.ops else "allowed", "Pod", seen.effective.rule, plan.changes)


def validate(request: AdmissionRequest, policy: Policy) -> Outcome:
    pod = _pod_in_scope(request)
    if pod is not None:
        seen = admission.view(pod, policy, namespace=namespace_of(request))
        if seen.effective.skip:
            return Outcome(allow(request.uid), "skipped", "Pod", seen.effective.rule)
        return _judge(request, "Pod", seen.effective.rule, seen.effective.mode, admission.problems(pod, seen))
    isvc = _isvc(request)
    if isvc is not None:
        namespace = namespace_of(request)
        verdict = inferenceservice.judge(isvc, policy, namespace=namespace)
        if verdict.skip:
            return Outcome(allow(request.uid), "skipped", inferenceservice.KIND, verdict.rule)
        mode, _ = namespace_mode_and_limits(policy, namespace)
        return _judge(request, inferenceservice.KIND, verdict.rule, mode, verdict.problems, notes=verdict.warnings)
    return _ignored(request)


def _pod_in_scope(request: AdmissionRequest) -> JsonObject | None:
    kind = request.kind
    if (kind.group, kind.kind) != ("", "Pod") or request.operation != "CREATE" or request.sub_resource:
        return None
    pod = request.object
    return pod if pod is not None and podspec.in_scope(pod) else None


def _isvc(request: AdmissionRequest) -> JsonObject | None:
    kind = request.kind
    if (kind.group, kind.kind) != (inferenceservice.GROUP, inferenceservice.KIND):
        return None
    if request.operation not in ("CREATE", "UPDATE") or request.sub_resource:
        return None
    return request.object


def namespace_of(request: AdmissionRequest) -> str:
    """request.namespace first: object.metadata.namespace is usually empty on pod CREATE."""
    obj = request.object or {}
    return request.namespace or str(podspec.mapping(obj.get("metadata")).get("namespace") or "")


def display_name(request: AdmissionRequest) -> str:
    """`namespace/name`, or `namespace/generateName*` for pods created by a ReplicaSet or Knative."""
    metadata = podspec.mapping((request.object or {}).get("metadata"))
    name = request.name or metadata.get("name") or f"{metadata.get('generateName', '')}*"
    return f"{namespace_of(request)}/{name}"


def _judge(
    request: AdmissionRequest, kind: str, rule: str, mode: Mode, problems: Sequence[Problem],
    *, notes: Sequence[str] = (),
) -> Outcome:
    """Deny, warn or audit per the mode; `notes` travel as warnings whatever the decision."""
    extra = [f"gpuguard: {n}" for n in notes]
    if not problems:
        return Outcome(allow(request.uid, warnings=extra), "allowed", kind, rule)
    messages = [str(p) for p in problems]
    if mode == "enforce":
        text = f"gpuguard denied {kind} {display_name(request)}: " + "; ".join(messages)
        return Outcome(deny(request.uid, text, warnings=extra), "denied", kind, rule, problems=tuple(problems))
    if mode == "warn":
        response = allow(request.uid, warnings=[f"gpuguard: {m}" for m in messages] + extra)
        return Outcome(response, "warned", kind, rule, problems=tuple(problems))
    audit = {VIOLATIONS_AUDIT_KEY: "; ".join(messages)}
    return Outcome(allow(request.uid, audit=audit, warnings=extra), "audited", kind, rule,
                   problems=tuple(problems))


def _ignored(request: AdmissionRequest) -> Outcome:
    return Outcome(allow(request.uid), "ignored", request.kind.kind)


def review(endpoint: Literal["mutate", "validate"], request: AdmissionRequest, policy: Policy) -> Outcome:
    """Dispatch by endpoint; the single entry point the HTTP handler calls."""
    return mutate(request, policy) if endpoint == "mutate" else validate(request, policy)


"""The admission decision: an AdmissionRequest and a policy in, an AdmissionResponse out. Pure.

`/mutate` fills in what an in-scope pod (an InferenceService predictor, head or worker, or an LLMInferenceService
workload pod of any role; `gpuguard.policy.workload`) is missing (GPU on the model container, tolerations, node
selector, scheduler, Triton scrape annotations, `gpuguard.io/applied`). `/validate` checks the result, and
InferenceService and LLMInferenceService objects on CREATE/UPDATE, and denies, warns or only counts per the
namespace's mode. Mutation never denies: kube-apiserver calls validating webhooks after every mutation, so that is
where the final pod is judged. Anything we do not handle (other kinds, UPDATE of pods, DELETE, pods outside KServe's
model servers) is allowed unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from gpuguard.contracts.admission import AdmissionRequest, AdmissionResponse, allow, deny
from gpuguard.policy import admission, inferenceservice, llmservice, podspec, workload
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
    for kind, judge in OBJECT_JUDGES:
        obj = _serving_object(request, kind)
        if obj is not None:
            return _judge_object(request, kind, judge(obj, policy, namespace=namespace_of(request)), policy)
    return _ignored(request)


OBJECT_JUDGES: tuple[tuple[str, Callable[..., inferenceservice.Verdict]], ...] = (
    (inferenceservice.KIND, inferenceservice.judge),
    (llmservice.KIND, llmservice.judge),
)
"""The serving.kserve.io kinds judged on CREATE/UPDATE, each by the pods KServe will build from it."""


def _judge_object(request: AdmissionRequest, kind: str, verdict: inferenceservice.Verdict, policy: Policy) -> Outcome:
    if verdict.skip:
        return Outcome(allow(request.uid), "skipped", kind, verdict.rule)
    mode, _ = namespace_mode_and_limits(policy, namespace_of(request))
    return _judge(request, kind, verdict.rule, mode, verdict.problems, notes=verdict.warnings)


def _pod_in_scope(request: AdmissionRequest) -> JsonObject | None:
    kind = request.kind
    if (kind.group, kind.kind) != ("", "Pod") or request.operation != "CREATE" or request.sub_resource:
        return None
    pod = request.object
    return pod if pod is not None and workload.workload_of(pod) is not None else None


def _serving_object(request: AdmissionRequest, kind_name: str) -> JsonObject | None:
    """A serving.kserve.io object of this kind on CREATE or UPDATE (not a subresource such as status)."""
    kind = request.kind
    if (kind.group, kind.kind) != (inferenceservice.GROUP, kind_name):
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


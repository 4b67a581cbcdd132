"""`gpuguard mutate -f` and `gpuguard validate -f`: the webhook's decisions on manifests, with no cluster.

The same pure core as the server: each Pod goes through /mutate then /validate exactly as kube-apiserver would call
them (validation judges the mutated pod); each InferenceService and LLMInferenceService through /validate, and the
pods it defines through both, so the output shows what its pods will get. Other kinds pass through unchanged.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from gpuguard.contracts.admission import AdmissionRequest, decode_patch
from gpuguard.policy import inferenceservice, llmservice, workload
from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy
from gpuguard.policy.model import Policy
from webhook.review import Outcome, mutate, validate

POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}
POD_RESOURCE = {"group": "", "version": "v1", "resource": "pods"}
ISVC_KIND = {"group": inferenceservice.GROUP, "version": "v1beta1", "kind": inferenceservice.KIND}
ISVC_RESOURCE = {"group": inferenceservice.GROUP, "version": "v1beta1", "resource": "inferenceservices"}
LLM_RESOURCE = "llminferenceservices"


@dataclass
class Admitted:
    """One manifest object after admission."""

    obj: dict[str, Any]
    label: str
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict: Outcome | None = None


def admit_pod(pod: dict[str, Any], policy: Policy, *, namespace: str) -> Admitted:
    request = _request(pod, namespace, POD_KIND, POD_RESOURCE)
    mutated = mutate(request, policy)
    patched = jsonpatch.apply_patch(pod, decode_patch(mutated.response)) if mutated.response.patch else pod
    verdict = validate(request.model_copy(update={"object": patched}), policy)
    label = f"Pod {_namespaced(pod, namespace)}"
    return Admitted(patched, label, list(mutated.changes), list(mutated.response.warnings or ()), verdict)


def admit_isvc(isvc: dict[str, Any], policy: Policy, *, namespace: str) -> Admitted:
    verdict = validate(_request(isvc, namespace, ISVC_KIND, ISVC_RESOURCE), policy)
    pod = admit_pod(inferenceservice.predictor_pod(isvc), policy, namespace=_namespace(isvc, namespace))
    changes = [f"predictor pods get: {change}" for change in pod.changes]
    label = f"InferenceService {_namespaced(isvc, namespace)}"
    return Admitted(isvc, label, changes, pod.warnings, verdict)


def admit_llmisvc(obj: dict[str, Any], policy: Policy, *, namespace: str) -> Admitted:
    """The object through /validate, and each workload pod it defines through both, to show what they get."""
    version = str(obj.get("apiVersion", "")).partition("/")[2] or llmservice.VERSIONS[0]
    kind = {"group": llmservice.GROUP, "version": version, "kind": llmservice.KIND}
    resource = {"group": llmservice.GROUP, "version": version, "resource": LLM_RESOURCE}
    verdict = validate(_request(obj, namespace, kind, resource), policy)
    changes: list[str] = []
    warnings: list[str] = []
    for pod in llmservice.workload_pods(obj):
        component = pod["metadata"]["labels"][workload.COMPONENT_LABEL]
        admitted = admit_pod(pod, policy, namespace=_namespace(obj, namespace))
        changes += [f"{component} pods get: {change}" for change in admitted.changes]
        warnings += admitted.warnings
    return Admitted(obj, f"{llmservice.KIND} {_namespaced(obj, namespace)}", changes, warnings, verdict)


def admit_all(documents: list[Any], policy: Policy, *, namespace: str) -> Iterator[Admitted]:
    for document in documents:
        if not isinstance(document, dict):
            continue
        kind = document.get("kind")
        if kind == "Pod":
            yield admit_pod(document, policy, namespace=namespace)
        elif kind == inferenceservice.KIND and str(document.get("apiVersion", "")).startswith(inferenceservice.GROUP):
            yield admit_isvc(document, policy, namespace=namespace)
        elif kind == llmservice.KIND and str(document.get("apiVersion", "")).startswith(llmservice.GROUP):
            yield admit_llmisvc(document, policy, namespace=namespace)
        else:
            yield Admitted(document, f"{kind} {_namespaced(document, namespace)} (not handled, unchanged)")


def mutate_command(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return 2
    documents, policy = loaded
    out = []
    for admitted in admit_all(documents, policy, namespace=args.namespace):
        header = [f"# gpuguard: {admitted.label}"]
        header += [f"#   + {change}" for change in admitted.changes] or ["#   (no changes)"]
        header += [f"#   ! {warning}" for warning in admitted.warnings]
        out.append("\n".join(header) + "\n" + yaml.safe_dump(admitted.obj, sort_keys=False))
    sys.stdout.write("---\n".join(out))
    return 0


def validate_command(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if loaded is None:
        return 2
    documents, policy = loaded
    failed = 0
    for admitted in admit_all(documents, policy, namespace=args.namespace):
        verdict = admitted.verdict
        if verdict is None or not verdict.problems:
            print(f"ok     {admitted.label}")
            continue
        failed += 1
        outcome = {"denied": "DENIED", "warned": "WARN", "audited": "AUDIT"}.get(verdict.decision, "FAIL")
        print(f"{outcome:<7}{admitted.label} (rule {verdict.rule})")
        for problem in verdict.problems:
            print(f"       - {problem}")
    return 1 if failed else 0


def _load(args: argparse.Namespace) -> tuple[list[Any], Policy] | None:
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text(encoding="utf-8")
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
        policy_text = args.policy.read_text(encoding="utf-8") if args.policy else default_policy_text()
        return documents, parse_policy(policy_text)
    except OSError as error:
        print(f"gpuguard: cannot read: {error}", file=sys.stderr)
    except yaml.YAMLError as error:
        print(f"gpuguard: {args.filename} is not valid YAML: {error}", file=sys.stderr)
    except PolicyError as error:
        print(f"gpuguard: the policy {args.policy} is invalid:\n{error}", file=sys.stderr)
    return None


def _request(obj: dict[str, Any], namespace: str, kind: dict[str, str], resource: dict[str, str]) -> AdmissionRequest:
    return AdmissionRequest.model_validate(
        {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "name": (obj.get("metadata") or {}).get("name", ""),
            "namespace": _namespace(obj, namespace),
            "operation": "CREATE",
            "object": obj,
        }
    )


def _namespace(obj: dict[str, Any], default: str) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or default)


def _namespaced(obj: dict[str, Any], default: str) -> str:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName', '')}*"
    return f"{_namespace(obj, default)}/{name}"

"""One pod's trip through gpuguard, exactly as kube-apiserver and kube-scheduler would drive it.

kube-apiserver sends the pod to `/mutate` in an AdmissionReview, applies the JSON Patch that comes back, then sends
the result to `/validate`. kube-scheduler (the `gpuguard-scheduler` profile) runs its own node-selector and taint
filters, then asks the extender: `/filter` with the surviving node names (`nodeCacheCapable: true`), `/prioritize`
with the ones it kept; the demo binds the pod to the top-scoring node by writing it, bound, into the cluster-state
file, which is what the extender reads, so the next pod sees the capacity taken. Nothing here imports a service:
everything crosses HTTP.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import ssl
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jsonpatch

from gpuguard.contracts.admission import AdmissionResponse, decode_patch
from gpuguard.contracts.extender import ExtenderFilterResult, HostPriorityList
from gpuguard.k8s.cluster_state import ClusterStateFile
from gpuguard.policy import podspec
from gpuguard.policy.resources import is_gpu_resource

WEBHOOK_HOST = "gpuguard-webhook.gpuguard.svc"
"""The name kube-apiserver calls the webhook by; its certificate must carry it."""


@dataclass
class Endpoints:
    webhook: str
    webhook_tls: ssl.SSLContext
    extender: str


@dataclass
class Trip:
    """What happened to one pod."""

    namespace: str
    name: str
    changes: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    """GPU resources the pod named itself (kept by the webhook)."""
    warnings: list[str] = field(default_factory=list)
    rule: str = ""
    denied: str = ""
    node: str = ""
    scores: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    not_sent: dict[str, str] = field(default_factory=dict)
    error: str = ""


def admission_review(pod: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The AdmissionReview kube-apiserver sends for a ReplicaSet's pod CREATE."""
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()), "kind": kind, "resource": resource, "requestKind": kind,
            "requestResource": resource, "name": "", "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


async def admit(session: aiohttp.ClientSession, endpoints: Endpoints, pod: dict[str, Any], trip: Trip) -> dict[str, Any]:
    """/mutate then /validate; the pod as stored (patched), with `trip` filled in."""
    mutated = await _review(session, endpoints, "/mutate", pod, trip.namespace)
    ops = decode_patch(mutated)
    stored = jsonpatch.apply_patch(copy.deepcopy(pod), ops) if ops else pod
    trip.changes = describe_patch(ops)
    model = podspec.model_container(podspec.spec_of(stored))
    trip.asked = [f"{k}: {v}" for k, v in (model.gpu_limits() if model else {}).items()]
    trip.warnings = list(mutated.warnings or ())
    trip.rule = str(podspec.annotations_of(stored).get("gpuguard.io/applied", ""))
    validated = await _review(session, endpoints, "/validate", stored, trip.namespace)
    if not validated.allowed:
        trip.denied = validated.status.message if validated.status else "denied"
    trip.warnings += list(validated.warnings or ())
    return stored


async def _review(
    session: aiohttp.ClientSession, endpoints: Endpoints, path: str, pod: Mapping[str, Any], namespace: str
) -> AdmissionResponse:
    body = json.dumps(admission_review(pod, namespace)).encode()
    async with session.post(endpoints.webhook + path, data=body, ssl=endpoints.webhook_tls,
                            server_hostname=WEBHOOK_HOST, headers={"Content-Type": "application/json"}) as reply:
        payload = await reply.json()
        if reply.status != 200:
            raise RuntimeError(f"{path} answered {reply.status}: {payload}")
    return AdmissionResponse.model_validate(payload["response"])


def describe_patch(ops: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short words for each change: `nvidia.com/gpu: 1`, `toleration nvidia.com/gpu`, ..."""
    described: list[str] = []
    for op in ops:
        path, value = str(op["path"]), op["value"]
        if "/resources" in path:
            limits = value.get("limits", value) if isinstance(value, dict) else {path.rsplit("/", 1)[-1]: value}
            described += [f"{_unescape(k)}: {v}" for k, v in limits.items() if is_gpu_resource(_unescape(k))]
        elif path.startswith("/spec/tolerations"):
            items = value if isinstance(value, list) else [value]
            described += [f"toleration {t.get('key', '*')}" for t in items]
        elif path.startswith("/spec/nodeSelector"):
            pairs = value.items() if isinstance(value, dict) else [(path.rsplit("/", 1)[-1], value)]
            described += [f"nodeSelector {_unescape(k)}={v}" for k, v in pairs]
        elif path == "/spec/schedulerName":
            described.append(f"schedulerName {value}")
        elif path.startswith("/spec/affinity"):
            described += [f"node affinity {e['key']} {e['operator']} {','.join(e['values'])}" for e in _expressions(value)]
        elif path.startswith("/metadata/annotations"):
            pairs = value.items() if isinstance(value, dict) else [(path.rsplit("/", 1)[-1], value)]
            described += [f"{_unescape(k)}={v}" for k, v in pairs if _unescape(k).startswith("prometheus.")]
    return described


def _expressions(value: Any) -> list[dict[str, Any]]:
    """The match expressions anywhere inside an added affinity subtree (or the one expression added)."""
    if isinstance(value, dict) and "key" in value and "operator" in value:
        return [value]
    if isinstance(value, dict):
        return [e for v in value.values() for e in _expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in _expressions(v)]
    return []


def _unescape(segment: str) -> str:
    return segment.replace("~1", "/").replace("~0", "~")


def named(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The pod as kube-apiserver stores it: a name from generateName, and its namespace."""
    stored = copy.deepcopy(pod)
    metadata = stored["metadata"]
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
    metadata["name"] = metadata.get("generateName", "pod-") + suffix
    metadata["namespace"] = namespace
    metadata["uid"] = str(uuid.uuid4())
    return stored


def scheduler_candidates(pod: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """kube-scheduler's own NodeAffinity (nodeSelector) and TaintToleration filters, which run before the extender."""
    spec = podspec.spec_of(pod)
    selector = podspec.mapping(spec.get("nodeSelector"))
    tolerations = [t for t in podspec.sequence(spec.get("tolerations")) if isinstance(t, dict)]
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for node in nodes:
        name = str(node["metadata"]["name"])
        labels = podspec.labels_of(node)
        missing = [f"{k}={v}" for k, v in selector.items() if labels.get(k) != v]
        untolerated = [t["key"] for t in podspec.sequence(podspec.spec_of(node).get("taints"))
                       if t.get("effect") in ("NoSchedule", "NoExecute") and not _tolerated(t, tolerations)]
        if missing:
            dropped[name] = f"nodeSelector {missing[0]}"
        elif not _affinity_admits(spec, labels):
            dropped[name] = "required node affinity"
        elif untolerated:
            dropped[name] = f"taint {untolerated[0]}"
        else:
            kept.append(name)
    return kept, dropped


def _affinity_admits(spec: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """kube-scheduler's NodeAffinity filter: some required term (ORed) whose expressions (ANDed) all hold."""
    node_affinity = podspec.mapping(podspec.mapping(spec.get("affinity")).get("nodeAffinity"))
    required = podspec.mapping(node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution"))
    terms = [podspec.mapping(t) for t in podspec.sequence(required.get("nodeSelectorTerms"))]
    return not terms or any(all(_holds(podspec.mapping(e), labels)
                                for e in podspec.sequence(t.get("matchExpressions"))) for t in terms)


def _holds(expression: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    key, operator = str(expression.get("key")), expression.get("operator")
    values = [str(v) for v in podspec.sequence(expression.get("values"))]
    present, value = key in labels, str(labels.get(key, ""))
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    return True  # Gt/Lt on numeric labels: the demo's pods use none


def _tolerated(taint: Mapping[str, Any], tolerations: Sequence[Mapping[str, Any]]) -> bool:
    for toleration in tolerations:
        key_ok = toleration.get("key") in (None, "", taint.get("key"))
        exists = toleration.get("operator") == "Exists"
        value_ok = exists or toleration.get("value") == taint.get("value")
        effect_ok = toleration.get("effect") in (None, "", taint.get("effect"))
        if key_ok and value_ok and effect_ok and (exists or toleration.get("key")):
            return True
    return False


async def schedule(session: aiohttp.ClientSession, endpoints: Endpoints, pod: dict[str, Any], names: list[str],
                   trip: Trip) -> None:
    """/filter then /prioritize, as kube-scheduler calls an extender with nodeCacheCapable: true."""
    args = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).encode()
    async with session.post(endpoints.extender + "/filter", data=args) as reply:
        result = ExtenderFilterResult.model_validate_json(await reply.read())
    trip.refused = {**result.failed_nodes, **result.failed_and_unresolvable_nodes}
    if result.error:
        trip.error = f"filter: {result.error}"
        return
    feasible = result.node_names or []
    if not feasible:
        return
    args = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": feasible}).encode()
    async with session.post(endpoints.extender + "/prioritize", data=args) as reply:
        priorities = HostPriorityList.model_validate_json(await reply.read()).root
    trip.scores = {p.host: p.score for p in sorted(priorities, key=lambda p: (-p.score, p.host))}
    trip.node = next(iter(trip.scores))


def bind(state: ClusterStateFile, pod: dict[str, Any], node: str) -> None:
    """What the default binder's Binding amounts to, plus the kubelet starting the pod."""
    bound = copy.deepcopy(pod)
    bound["spec"]["nodeName"] = node
    bound["status"] = {"phase": "Running"}
    state.put(bound)


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float | None:
    """One unlabelled sample from a Prometheus text endpoint."""
    async with session.get(url) as reply:
        text = await reply.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def wait_for_metric(session: aiohttp.ClientSession, url: str, name: str, *, at_least: float,
                          timeout: float = 15.0) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await metric(session, url, name)
        if value is not None and value >= at_least:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"{name} stayed at {value} (waiting for {at_least}) at {url}")
        await asyncio.sleep(0.05)

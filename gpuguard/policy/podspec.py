"""Read-only views of the parts of a pod (or an InferenceService component) that GPU policy cares about.

Incoming Kubernetes objects stay plain JSON dicts: parsing a whole pod into typed models would cost more than the
rest of an admission request, and the webhook must tolerate fields it has never heard of. These helpers read the
few fields we need defensively (a missing or null section reads as empty). Pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gpuguard.policy.mig import MIG_RESOURCE_PREFIX
from gpuguard.policy.resources import is_gpu_resource

JsonObject = Mapping[str, Any]

MODEL_CONTAINER = "kserve-container"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
COMPONENT_LABEL = "component"


def is_mig_resource(name: str) -> bool:
    return name.startswith(MIG_RESOURCE_PREFIX)


_EMPTY: JsonObject = {}


def mapping(value: object) -> JsonObject:
    """The value if it is a JSON object, else an empty one (null, absent and wrong types read as empty).

    Parsed JSON objects are dicts; checking `dict` rather than the `Mapping` ABC keeps this hot helper cheap.
    """
    return value if isinstance(value, dict) else _EMPTY


def sequence(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def text(value: object) -> str | None:
    """The value if it is a JSON string, else None (a number where a label value belongs reads as unset)."""
    return value if isinstance(value, str) else None


def labels_of(obj: JsonObject) -> JsonObject:
    return mapping(mapping(obj.get("metadata")).get("labels"))


def annotations_of(obj: JsonObject) -> JsonObject:
    return mapping(mapping(obj.get("metadata")).get("annotations"))


def spec_of(obj: JsonObject) -> JsonObject:
    return mapping(obj.get("spec"))


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """A container and where it sits: `kind` is containers or initContainers, `index` its position there."""

    kind: str
    index: int
    body: JsonObject
    label: str = ""
    """Where the container sits when it is not in a pod, e.g. `predictor.model` of an InferenceService."""

    @property
    def name(self) -> str:
        return str(self.body.get("name") or f"{self.kind}[{self.index}]")

    @property
    def where(self) -> str:
        """How messages name the container: `container 'kserve-container'` or `predictor.model`."""
        if self.label:
            return f"{self.label} container {self.body['name']!r}" if self.body.get("name") else self.label
        return f"container {self.name!r}"

    @property
    def limits(self) -> JsonObject:
        return mapping(mapping(self.body.get("resources")).get("limits"))

    @property
    def requests(self) -> JsonObject:
        return mapping(mapping(self.body.get("resources")).get("requests"))

    def gpu_limits(self) -> dict[str, Any]:
        return {k: v for k, v in self.limits.items() if is_gpu_resource(k)}

    def gpu_requests(self) -> dict[str, Any]:
        return {k: v for k, v in self.requests.items() if is_gpu_resource(k)}

    def asks_for_gpu(self) -> bool:
        return asks_for_gpu(self.body)

    @property
    def privileged(self) -> bool:
        return mapping(self.body.get("securityContext")).get("privileged") is True


def asks_for_gpu(container: JsonObject) -> bool:
    """Whether a container names any GPU resource in its limits or requests, even with a count of 0: what the user
    wrote about GPUs is kept (how many GPUs the pod gets is `gpuguard.policy.demand`'s question)."""
    resources = mapping(container.get("resources"))
    for section in (resources.get("limits"), resources.get("requests")):
        if isinstance(section, dict) and any(is_gpu_resource(name) for name in section):
            return True
    return False


def containers(pod_spec: JsonObject) -> list[ContainerRef]:
    return [ContainerRef("containers", i, mapping(c)) for i, c in enumerate(sequence(pod_spec.get("containers")))]


def init_containers(pod_spec: JsonObject) -> list[ContainerRef]:
    return [
        ContainerRef("initContainers", i, mapping(c)) for i, c in enumerate(sequence(pod_spec.get("initContainers")))
    ]


def all_containers(pod_spec: JsonObject) -> Iterator[ContainerRef]:
    yield from init_containers(pod_spec)
    yield from containers(pod_spec)


def model_container(pod_spec: JsonObject) -> ContainerRef | None:
    """`kserve-container`, or else the single app container that already asks for a GPU; None if neither exists.

    Never a sidecar (queue-proxy, agent) or an init container (storage-initializer): GPUs there are wasted.
    """
    app = sequence(pod_spec.get("containers"))
    for index, body in enumerate(app):
        if isinstance(body, dict) and body.get("name") == MODEL_CONTAINER:
            return ContainerRef("containers", index, body)
    with_gpu = [i for i, body in enumerate(app) if isinstance(body, dict) and asks_for_gpu(body)]
    return ContainerRef("containers", with_gpu[0], app[with_gpu[0]]) if len(with_gpu) == 1 else None


def in_scope(pod: JsonObject) -> bool:
    """A KServe predictor pod: labelled with its InferenceService, component predictor or no component label."""
    pod_labels = labels_of(pod)
    if ISVC_LABEL not in pod_labels:
        return False
    return bool(pod_labels.get(COMPONENT_LABEL, "predictor") == "predictor")

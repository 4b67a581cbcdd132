"""AdmissionReview `admission.k8s.io/v1` and `v1beta1`: the request kube-apiserver sends and the reply it expects.

Both versions have the same shape; the reply must carry the apiVersion the request used and its `uid`. The
embedded object stays a plain dict (see `gpuguard.policy.podspec`). `patch` travels as base64 of the JSON Patch
bytes because it is `[]byte` in Go. A body that is not JSON, or not an AdmissionReview, raises `InvalidReview`,
which servers turn into HTTP 400.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, Literal

from typing_extensions import TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json
from pydantic.alias_generators import to_camel

from gpuguard.policy.loading import format_path

ApiVersion = Literal["admission.k8s.io/v1", "admission.k8s.io/v1beta1"]
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class InvalidReview(ValueError):
    """The body is not a usable AdmissionReview; the message says which field is wrong."""


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True)


class GroupVersionKind(WireModel):
    group: str = ""
    version: str
    kind: str


class GroupVersionResource(WireModel):
    group: str = ""
    version: str
    resource: str


class UserInfo(WireModel):
    username: str = ""
    uid: str = ""
    groups: tuple[str, ...] = ()


class AdmissionRequest(WireModel):
    uid: str = Field(min_length=1)
    kind: GroupVersionKind
    resource: GroupVersionResource
    sub_resource: str = ""
    name: str = ""
    """Empty on CREATE with generateName, which is every pod a ReplicaSet or Knative creates."""
    namespace: str = ""
    """Use this, not object.metadata.namespace, which is often empty on pod CREATE."""
    operation: Operation
    user_info: UserInfo = UserInfo()
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool = False


class AdmissionReview(WireModel):
    api_version: ApiVersion
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


# The parts of a Pod that GPU admission reads, as TypedDicts so they parse into plain dicts. /mutate parses the
# incoming pod through these: pydantic-core skips everything else (env, volumes, probes, managedFields, ...) without
# building Python objects for it, which roughly halves the cost of parsing a predictor pod. Leaves are `Any` because
# the decision code reads them defensively; a pod that does not fit this shape is parsed whole instead.


class PodMetadataView(TypedDict, total=False):
    name: Any
    generateName: Any
    namespace: Any
    labels: dict[str, Any] | None
    annotations: dict[str, Any] | None


class ResourcesView(TypedDict, total=False):
    limits: dict[str, Any] | None
    requests: dict[str, Any] | None
    claims: list[Any] | None


class SecurityContextView(TypedDict, total=False):
    privileged: Any


class EnvVarView(TypedDict, total=False):
    name: Any
    value: Any
    valueFrom: Any


class VolumeMountView(TypedDict, total=False):
    mountPath: Any


class ContainerView(TypedDict, total=False):
    name: Any
    image: Any
    command: list[Any] | None
    args: list[Any] | None
    resources: ResourcesView | None
    securityContext: SecurityContextView | None
    restartPolicy: Any
    env: list[EnvVarView] | None
    """Read for NVIDIA_VISIBLE_DEVICES (device access without a request)."""
    volumeMounts: list[VolumeMountView] | None
    """Read for mounts under /var/run/nvidia-container-devices (the runtime's volume-mount device requests)."""


class PodSpecView(TypedDict, total=False):
    containers: list[ContainerView] | None
    initContainers: list[ContainerView] | None
    tolerations: list[Any] | None
    nodeSelector: dict[str, Any] | None
    affinity: dict[str, Any] | None
    schedulerName: Any
    resourceClaims: list[Any] | None


class PodView(TypedDict, total=False):
    apiVersion: Any
    kind: Any
    metadata: PodMetadataView | None
    spec: PodSpecView | None


class _PodAdmissionRequest(AdmissionRequest):
    object: PodView | None = None  # type: ignore[assignment]  # a TypedDict is the same dict at run time


class _PodAdmissionReview(AdmissionReview):
    request: _PodAdmissionRequest


class Status(WireModel):
    code: int
    message: str
    reason: str = ""
    status: Literal["Success", "Failure"] = "Failure"


class AdmissionResponse(WireModel):
    uid: str
    allowed: bool
    status: Status | None = None
    patch: str | None = None
    patch_type: Literal["JSONPatch"] | None = None
    warnings: tuple[str, ...] | None = None
    audit_annotations: dict[str, str] | None = None


class _ReviewReply(WireModel):
    api_version: ApiVersion
    kind: Literal["AdmissionReview"] = "AdmissionReview"
    response: AdmissionResponse


def parse_review(body: bytes | str, *, pod_view: bool = False) -> AdmissionReview:
    """Parse a request body; raise `InvalidReview` naming the first wrong fields.

    With `pod_view`, the object keeps only what GPU admission reads of a Pod (see `PodView`); use it where only
    Pods are decided on. Anything that does not fit that shape falls back to the whole parse.
    """
    if pod_view:
        try:
            return _PodAdmissionReview.model_validate_json(body)
        except ValidationError:
            pass  # not pod-shaped, or not valid at all: the whole parse decides and reports
    try:
        return AdmissionReview.model_validate_json(body)
    except ValidationError as error:
        details = error.errors(include_url=False)
        if details and details[0]["type"] == "json_invalid":
            raise InvalidReview(f"body is not valid JSON: {details[0]['msg']}") from None
        fields = "; ".join(f"{format_path(d['loc']) or 'body'}: {d['msg']}" for d in details[:5])
        raise InvalidReview(f"not an AdmissionReview ({fields})") from None


def encode_reply(api_version: ApiVersion, response: AdmissionResponse) -> bytes:
    """The reply envelope, echoing the request's apiVersion; unset optional fields are left out."""
    reply = _ReviewReply(api_version=api_version, response=response)
    return reply.model_dump_json(by_alias=True, exclude_none=True).encode()


def allow(uid: str, *, ops: Sequence[dict[str, Any]] = (), warnings: Sequence[str] = (),
          audit: dict[str, str] | None = None) -> AdmissionResponse:
    """An allowing response, with a JSON Patch when there are operations."""
    patch = base64.b64encode(to_json(list(ops))).decode() if ops else None
    return AdmissionResponse(
        uid=uid,
        allowed=True,
        patch=patch,
        patch_type="JSONPatch" if patch else None,
        warnings=tuple(warnings) or None,
        audit_annotations=audit or None,
    )


def deny(uid: str, message: str, *, code: int = 403, reason: str = "Forbidden",
         warnings: Sequence[str] = ()) -> AdmissionResponse:
    return AdmissionResponse(
        uid=uid,
        allowed=False,
        status=Status(code=code, message=message, reason=reason),
        warnings=tuple(warnings) or None,
    )


def decode_patch(response: AdmissionResponse) -> list[dict[str, Any]]:
    """The JSON Patch operations of a response (empty when it has none)."""
    if response.patch is None:
        return []
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response.patch))
    return ops

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

from pydantic import BaseModel, ConfigDict, Field, ValidationError
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


def parse_review(body: bytes | str) -> AdmissionReview:
    """Parse a request body; raise `InvalidReview` naming the first wrong fields."""
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
    patch = base64.b64encode(json.dumps(list(ops), separators=(",", ":")).encode()).decode() if ops else None
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

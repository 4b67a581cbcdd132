"""Remember /mutate replies for requests that differ only in their uid.

Every pod a ReplicaSet or a Knative revision creates arrives as the same AdmissionReview apart from `request.uid`
(the pods share `generateName`; the name is assigned later), so a scale-up from 1 to 50 replicas asks the same
question 50 times. The decision is a pure function of the request and the policy, so the reply to a repeat can be
taken from memory with the new uid spliced in, before the body is even parsed.

How a repeat is recognised, exactly: the body's `"uid":"<value>"` pairs (values restricted to the characters of a
Kubernetes UID, so no JSON escaping can hide in them) are blanked with a marker that valid JSON cannot contain, and
the blanked body itself is the key (compared byte for byte: no digest, so no collision can ever give a wrong
answer). The first time a body is seen it is parsed and decided as usual, and the memo notes which of those pairs
held `request.uid`. A later body is a repeat when its blanked form is equal and every uid pair other than that one
holds the same value as before: then it is byte for byte the same request with another uid, in the same place. Anything else, however small, is a
new question. The memory is dropped whenever a new policy generation comes into force, and bounded in size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pydantic_core import to_json

from gpuguard.contracts.admission import AdmissionReview, encode_reply
from gpuguard.policy.model import Policy
from webhook.review import Outcome, mutate

DEFAULT_CAPACITY = 512
"""Distinct requests remembered: far more than the InferenceService revisions a cluster rolls out at once."""
MAX_REMEMBERED_BODY = 32 * 1024
"""Bytes; larger requests are decided afresh each time. A predictor pod's AdmissionReview is 5-15 KB, and the key is
the (blanked) body itself, so this bounds the memo at capacity x this (16 MiB)."""

_UID_KEY = b'"uid":"'
_UID_VALUE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_BLANK = b'"uid":\x00'  # a raw NUL never occurs in valid JSON, so a blanked pair cannot be mistaken for a real one
_SENTINEL = "\x00gpuguard-uid\x00"
_SENTINEL_JSON = to_json(_SENTINEL)


@dataclass(frozen=True, slots=True)
class Answer:
    operation: str
    reply: bytes
    """The encoded AdmissionReview reply for this request (with its own uid)."""
    outcome: Outcome
    """The decision; when remembered, its `response` is the first request's, so read only the decision fields."""


@dataclass(frozen=True, slots=True)
class _Template:
    operation: str
    request_uid_index: int
    other_uids: tuple[bytes, ...]
    before_uid: bytes
    after_uid: bytes
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Unknown:
    """A request `recall` did not know: its shape, computed once, for `answer` to remember it by."""

    blanked: bytes
    uids: list[bytes]
    size: int


class MutationMemo:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._generation = -1
        self._templates: dict[bytes, _Template] = {}
        self.hits = 0
        self.misses = 0

    def recall(self, body: bytes, *, generation: int) -> Answer | Unknown:
        """The reply to a repeat of a request answered under this policy generation, or the new request's shape."""
        if generation != self._generation:
            self._templates.clear()
            self._generation = generation
        blanked, uids = _shape(body)
        unknown = Unknown(blanked, uids, len(body))
        template = self._templates.get(blanked)
        if template is None or len(uids) != len(template.other_uids) + 1:
            return unknown
        index = template.request_uid_index
        if (*uids[:index], *uids[index + 1:]) != template.other_uids:
            return unknown
        self.hits += 1
        reply = template.before_uid + b'"' + uids[index] + b'"' + template.after_uid
        return Answer(template.operation, reply, template.outcome)

    def answer(self, unknown: Unknown, review: AdmissionReview, policy: Policy) -> Answer:
        """Decide a request `recall` did not know, and remember it for its repeats."""
        self.misses += 1
        request = review.request
        outcome = mutate(request, policy)
        marked = encode_reply(review.api_version, outcome.response.model_copy(update={"uid": _SENTINEL}))
        before, found, after = marked.partition(_SENTINEL_JSON)
        if not found or _SENTINEL_JSON in after:  # cannot happen with a JSON encoder; never splice if it did
            return Answer(request.operation, encode_reply(review.api_version, outcome.response), outcome)
        self._remember(unknown, request.uid, _Template(request.operation, 0, (), before, after, outcome))
        return Answer(request.operation, before + to_json(request.uid) + after, outcome)

    def _remember(self, unknown: Unknown, request_uid: str, template: _Template) -> None:
        positions = [i for i, uid in enumerate(unknown.uids) if uid == request_uid.encode()]
        if len(positions) != 1 or unknown.size > MAX_REMEMBERED_BODY:
            return  # the uid is not a plain UID, or it is not alone: never guess which pair it is
        if len(self._templates) >= self.capacity:
            del self._templates[next(iter(self._templates))]  # the oldest: dicts keep insertion order
        index = positions[0]
        others = (*unknown.uids[:index], *unknown.uids[index + 1:])
        self._templates[unknown.blanked] = replace(template, request_uid_index=index, other_uids=others)


def _shape(body: bytes) -> tuple[bytes, list[bytes]]:
    """The body with its uid values blanked, and those values in order.

    A plain `find` loop: it touches the 4-10 KB body far less than a regular expression scanning all of it would.
    """
    pieces: list[bytes] = []
    uids: list[bytes] = []
    kept = 0
    position = body.find(_UID_KEY)
    while position >= 0:
        start = position + len(_UID_KEY)
        end = body.find(b'"', start)
        if end < 0:
            break
        value = body[start:end]
        if _UID_VALUE.fullmatch(value):
            pieces.append(body[kept:position])
            uids.append(value)
            kept = end + 1
        position = body.find(_UID_KEY, start)
    if not uids:
        return body, uids
    pieces.append(body[kept:])
    return _BLANK.join(pieces), uids

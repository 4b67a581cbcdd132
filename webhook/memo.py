"""Remember /mutate decisions for pods that look the same to GPU policy.

Every pod a ReplicaSet or a Knative revision creates is identical in everything GPU admission reads (labels,
annotations, containers, tolerations, selector, scheduler; `generateName` is shared too), so a scale-up from 1 to 50
replicas asks the same question 50 times. The decision is a pure function of the pod's content, its namespace and
the policy, so it can be answered from memory: the key is exactly those inputs (the pod as parsed for /mutate, which
holds only the fields the decision reads), and the memory is dropped whenever a new policy generation comes into
force. Only the request uid differs between answers, and it is filled in per request.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic_core import to_json

from gpuguard.contracts.admission import AdmissionRequest
from gpuguard.policy.model import Policy
from webhook.review import Outcome, mutate, namespace_of

DEFAULT_CAPACITY = 4096
"""Distinct pod shapes remembered; a few KB each. Far more than the InferenceService revisions a cluster runs."""


class MutationMemo:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._generation = -1
        self._answers: dict[tuple[str, str, str, str, bytes], Outcome] = {}
        self.hits = 0
        self.misses = 0

    def mutate(self, request: AdmissionRequest, policy: Policy, *, generation: int) -> Outcome:
        """The same Outcome `review.mutate` gives, answered from memory for a pod shape seen before."""
        if generation != self._generation:
            self._answers.clear()
            self._generation = generation
        if request.operation != "CREATE" or request.object is None:
            return mutate(request, policy)
        kind = request.kind
        key = (kind.group, kind.kind, request.sub_resource, namespace_of(request), to_json(request.object))
        remembered = self._answers.get(key)
        if remembered is not None:
            self.hits += 1
            return replace(remembered, response=remembered.response.model_copy(update={"uid": request.uid}))
        self.misses += 1
        outcome = mutate(request, policy)
        if len(self._answers) >= self.capacity:
            del self._answers[next(iter(self._answers))]  # the oldest: dicts keep insertion order
        self._answers[key] = outcome
        return outcome

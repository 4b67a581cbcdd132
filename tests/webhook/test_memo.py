"""Repeated pods (a ReplicaSet scaling up) are answered from memory, and the memory never gives a wrong answer."""

from __future__ import annotations

import base64
import json
from typing import Any

from gpuguard.contracts.admission import encode_reply, parse_review
from gpuguard.policy.model import Policy
from tests.conftest import load_data, policy_with
from webhook.memo import Answer, MutationMemo, Unknown
from webhook.review import mutate


def compact(review: dict[str, Any], **request_changes: Any) -> bytes:
    """The review as kube-apiserver sends it: compact JSON."""
    review = json.loads(json.dumps(review))
    review["request"].update(request_changes)
    return json.dumps(review, separators=(",", ":")).encode()


def ask(memo: MutationMemo, body: bytes, policy: Policy, generation: int = 1) -> bytes:
    """What the server does: recall a repeat before parsing, else parse and decide."""
    recalled = memo.recall(body, generation=generation)
    if isinstance(recalled, Answer):
        return recalled.reply
    return memo.answer(recalled, parse_review(body, pod_view=True), policy).reply


def fresh(body: bytes, policy: Policy) -> bytes:
    review = parse_review(body)
    return encode_reply(review.api_version, mutate(review.request, policy).response)


def test_a_repeated_pod_is_answered_from_memory_with_its_own_uid(policy: Policy) -> None:
    memo = MutationMemo()
    review = load_data("review-knative-triton.json")
    first, second = compact(review, uid="uid-1"), compact(review, uid="uid-2")
    assert ask(memo, first, policy) == fresh(first, policy)
    assert ask(memo, second, policy) == fresh(second, policy)
    assert (memo.hits, memo.misses) == (1, 1)
    assert json.loads(ask(memo, second, policy))["response"]["uid"] == "uid-2"


def test_any_other_difference_is_a_new_question(policy: Policy) -> None:
    memo = MutationMemo()
    review = load_data("review-knative-triton.json")
    ask(memo, compact(review, uid="a"), policy)
    changed = json.loads(json.dumps(review))
    changed["request"]["object"]["metadata"]["annotations"]["gpuguard.io/gpu-count"] = "2"
    body = compact(changed, uid="b")
    assert ask(memo, body, policy) == fresh(body, policy)
    assert memo.hits == 0
    other_namespace = compact(review, uid="c", namespace="llm-prod")
    assert ask(memo, other_namespace, policy) == fresh(other_namespace, policy)
    assert memo.hits == 0


def test_a_new_policy_generation_forgets_everything() -> None:
    memo = MutationMemo()
    review = load_data("review-knative-sklearn.json")
    old = policy_with()
    new = policy_with(rules=[{"name": "bigger", "match": {"runtimes": ["sklearn"]}, "gpu": {"migProfile": "2g.20gb"}}])
    ask(memo, compact(review, uid="a"), old, generation=1)
    body = compact(review, uid="b")
    reply = ask(memo, body, new, generation=2)
    assert reply == fresh(body, new)
    assert "mig-2g.20gb" in base64.b64decode(json.loads(reply)["response"]["patch"]).decode()
    assert memo.hits == 0


def test_a_body_whose_uid_pair_is_not_found_once_is_decided_afresh(policy: Policy) -> None:
    memo = MutationMemo()
    indented = json.dumps(load_data("review-knative-triton.json"), indent=2).encode()  # "uid": "..." with a space
    assert ask(memo, indented, policy) == fresh(indented, policy)
    assert ask(memo, indented, policy) == fresh(indented, policy)
    assert (memo.hits, memo.misses) == (0, 2)


def test_memory_is_bounded(policy: Policy) -> None:
    memo = MutationMemo(capacity=2)
    review = load_data("review-knative-triton.json")
    for namespace in ("a", "b", "c"):
        ask(memo, compact(review, uid="u", namespace=namespace), policy)
    ask(memo, compact(review, uid="v", namespace="a"), policy)
    assert memo.hits == 0, "the oldest entry was dropped"
    ask(memo, compact(review, uid="w", namespace="c"), policy)
    assert memo.hits == 1


def test_a_body_equal_except_for_another_uid_field_is_a_new_question(policy: Policy) -> None:
    memo = MutationMemo()
    review = load_data("review-knative-triton.json")
    ask(memo, compact(review, uid="a"), policy)
    other_owner = json.loads(json.dumps(review))
    other_owner["request"]["object"]["metadata"]["ownerReferences"][0]["uid"] = "another-replicaset"
    body = compact(other_owner, uid="b")
    assert ask(memo, body, policy) == fresh(body, policy)
    assert memo.hits == 0


def test_a_uid_that_is_not_a_plain_kubernetes_uid_is_never_recalled(policy: Policy) -> None:
    memo = MutationMemo()
    review = load_data("review-knative-triton.json")
    ask(memo, compact(review, uid="a"), policy)
    for odd in ("", "with space", 'quote"inside', "x" * 200):
        body = compact(review, uid=odd)
        assert isinstance(memo.recall(body, generation=1), Unknown), odd


def test_an_invalid_body_that_looks_like_a_blanked_repeat_is_not_recalled(policy: Policy) -> None:
    memo = MutationMemo()
    review = load_data("review-knative-triton.json")
    ask(memo, compact(review, uid="a"), policy)
    forged = compact(review, uid="a").replace(b'"uid":"a"', b'"uid":\x00')
    assert isinstance(memo.recall(forged, generation=1), Unknown)

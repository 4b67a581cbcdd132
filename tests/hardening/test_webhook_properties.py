"""Properties of the admission decision over generated KServe pods, InferenceServices and AdmissionReviews.

Each property holds for every example hypothesis draws (tests/strategies/kserve.py): patches apply cleanly and
change nothing a second time, GPUs never land on sidecars or init containers, the lean `pod_view` parse decides
exactly as the whole parse, the memo answers byte for byte as a fresh decision, and fractional GPUs are never
allowed in enforce mode. The HTTP properties run through the real aiohttp app in this process.
"""

from __future__ import annotations

import copy
import http.client
import json
from collections.abc import Iterator
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from gpuguard.contracts.admission import InvalidReview, decode_patch, encode_reply, parse_review
from gpuguard.policy.loading import default_policy
from gpuguard.policy.model import Policy
from gpuguard.policy.podspec import is_gpu_resource
from tests.conftest import policy_with
from tests.hardening.inprocess import InProcessServer
from tests.strategies import kserve
from tests.strategies.profiles import fewer
from webhook.memo import Answer, MutationMemo
from webhook.review import mutate, validate

ALL_OVERRIDES = ["gpu-count", "mig-profile", "gpu-product", "sharing", "skip"]
POLICIES: dict[str, Policy] = {
    "default": default_policy(),
    "warn": policy_with(mode="warn"),
    "audit": policy_with(mode="audit", namespaces={}),
    "open": policy_with(userOverrides=ALL_OVERRIDES,
                        limits={"maxGpusPerPod": 2, "allowedMigProfiles": [], "allowTimeSlicing": False},
                        timeSlicing={"renameByDefault": True}),
    "no-scheduler": policy_with(defaults={"gpu": {"migProfile": "2g.20gb"}, "schedulerName": "",
                                          "tritonMetrics": {"enabled": False}}),
}
ENFORCE_EVERYWHERE = policy_with(namespaces={})
"""enforce in every namespace, and users may not opt out with gpuguard.io/skip (not in userOverrides)."""
policies = st.sampled_from(sorted(POLICIES)).map(POLICIES.__getitem__)

# The subtrees of a pod that /mutate may touch; the first group is `{model container index}`.
ALLOWED_PATHS = ("/spec/containers/{model}/resources", "/spec/tolerations", "/spec/nodeSelector",
                 "/spec/schedulerName", "/spec/affinity", "/metadata/annotations")


def decide(body: bytes, policy: Policy, *, pod_view: bool) -> Any:
    return mutate(parse_review(body, pod_view=pod_view).request, policy)


def gpu_names(container: Any) -> set[str]:
    resources = container.get("resources") if isinstance(container, dict) else None
    names: set[str] = set()
    for section in ("limits", "requests"):
        part = resources.get(section) if isinstance(resources, dict) else None
        names |= {n for n in part if is_gpu_resource(n)} if isinstance(part, dict) else set()
    return names


def model_index(pod: dict[str, Any]) -> int | None:
    """Where the model container is, worked out here independently of gpuguard.policy.podspec."""
    listed = pod["spec"].get("containers")
    if not isinstance(listed, list):
        return None
    named = [i for i, c in enumerate(listed) if isinstance(c, dict) and c.get("name") == kserve.MODEL_CONTAINER]
    if named:
        return named[0]
    with_gpu = [i for i, c in enumerate(listed) if gpu_names(c)]
    return with_gpu[0] if len(with_gpu) == 1 else None


@given(review=kserve.pod_reviews(realistic=False, in_scope=None), policy=policies)
def test_every_patch_applies_to_the_original_and_a_second_admission_changes_nothing(
    review: dict[str, Any], policy: Policy
) -> None:
    body = kserve.compact(review)
    request = parse_review(body).request
    ops = decode_patch(mutate(request, policy).response)
    note(f"ops: {ops}")
    result = jsonpatch.apply_patch(copy.deepcopy(review["request"]["object"]), ops)  # raises if it does not apply
    again = mutate(request.model_copy(update={"object": result}), policy)
    assert decode_patch(again.response) == [], "admitting the mutated pod again must yield no patch"


@given(review=kserve.pod_reviews(realistic=False, in_scope=True, operations=("CREATE",)), policy=policies)
def test_gpus_never_land_on_a_sidecar_or_init_container_and_the_patch_touches_only_what_it_owns(
    review: dict[str, Any], policy: Policy
) -> None:
    pod = review["request"]["object"]
    ops = decode_patch(mutate(parse_review(kserve.compact(review)).request, policy).response)
    result = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
    model = model_index(pod)
    allowed = tuple(p.format(model=model) for p in ALLOWED_PATHS if model is not None or "{model}" not in p)
    for op in ops:
        assert op["path"].startswith(allowed), op
        assert not op["path"].startswith("/spec/initContainers"), op
    for kind in ("containers", "initContainers"):
        before, after = pod["spec"].get(kind), result["spec"].get(kind)
        if not isinstance(before, list):
            assert after == before
            continue
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            if kind == "containers" and index == model:
                continue
            assert gpu_names(new) == gpu_names(old), f"{kind}[{index}] {old.get('name')} got a GPU"


@fewer(6)
@given(review=kserve.pod_reviews(realistic=True, in_scope=True, operations=("CREATE",)), policy=policies)
def test_a_mutated_predictor_pod_is_valid_against_the_kubernetes_schema(review: dict[str, Any], policy: Policy) -> None:
    pod = review["request"]["object"]
    kubernetes_validate.validate(pod, "1.29.0", strict=True)  # the generator only makes what kube-apiserver sends
    ops = decode_patch(mutate(parse_review(kserve.compact(review)).request, policy).response)
    kubernetes_validate.validate(jsonpatch.apply_patch(copy.deepcopy(pod), ops), "1.29.0", strict=True)


@given(review=kserve.pod_reviews(realistic=False, in_scope=None), policy=policies)
def test_the_lean_pod_view_parse_decides_exactly_as_the_whole_parse(review: dict[str, Any], policy: Policy) -> None:
    body = kserve.compact(review)
    lean, whole = decide(body, policy, pod_view=True), decide(body, policy, pod_view=False)
    assert lean == whole


@st.composite
def variants(draw: st.DrawFn, review: dict[str, Any]) -> dict[str, Any]:
    """The same review with one small difference somewhere: each must be a new question for the memo."""
    changed = copy.deepcopy(review)
    request = changed["request"]
    pod = request["object"]
    choice = draw(st.integers(0, 5))
    if choice == 0:
        request["namespace"] = draw(st.sampled_from(kserve.NAMESPACES))
    elif choice == 1:
        pod["metadata"].setdefault("labels", {})["serving.kserve.io/inferenceservice"] = "other"
    elif choice == 2:
        request["userInfo"]["uid"] = draw(kserve.uids)  # another uid pair than request.uid
    elif choice == 3:
        request["operation"] = draw(st.sampled_from(("CREATE", "UPDATE", "DELETE")))
    elif choice == 4:
        pod["spec"]["containers"] = pod["spec"]["containers"][::-1]
    else:
        changed["apiVersion"] = draw(st.sampled_from(("admission.k8s.io/v1", "admission.k8s.io/v1beta1")))
    return changed


def fresh(body: bytes, policy: Policy) -> bytes:
    review = parse_review(body)
    return encode_reply(review.api_version, mutate(review.request, policy).response)


def ask(memo: MutationMemo, body: bytes, policy: Policy) -> bytes:
    """What the server does: recall a repeat before parsing, else parse (lean) and decide."""
    recalled = memo.recall(body, generation=1)
    if isinstance(recalled, Answer):
        return recalled.reply
    return memo.answer(recalled, parse_review(body, pod_view=True), policy).reply


@given(data=st.data(), review=kserve.pod_reviews(realistic=False, in_scope=None), policy=policies,
       other_uid=kserve.uids)
def test_the_memo_answers_byte_for_byte_as_a_fresh_decision(
    data: st.DataObject, review: dict[str, Any], policy: Policy, other_uid: str
) -> None:
    memo = MutationMemo()
    first = kserve.compact(review)
    assert ask(memo, first, policy) == fresh(first, policy)
    review["request"]["uid"] = other_uid
    repeat = kserve.compact(review)
    assert isinstance(memo.recall(repeat, generation=1), Answer), "a repeat with another uid is recalled"
    assert ask(memo, repeat, policy) == fresh(repeat, policy)
    for _ in range(3):
        changed = kserve.compact(data.draw(variants(review)))
        assert ask(memo, changed, policy) == fresh(changed, policy)
    spaced = json.dumps(review).encode()  # not the compact form kube-apiserver sends: decided afresh, same answer
    assert ask(memo, spaced, policy) == fresh(spaced, policy)


@given(review=kserve.pod_reviews(in_scope=True, fractional_gpu=True, operations=("CREATE",)))
def test_a_pod_asking_for_a_fractional_gpu_anywhere_is_never_allowed_in_enforce_mode(review: dict[str, Any]) -> None:
    body = kserve.compact(review)
    request = parse_review(body).request
    assert request.object is not None
    mutated = jsonpatch.apply_patch(copy.deepcopy(request.object),
                                    decode_patch(mutate(request, ENFORCE_EVERYWHERE).response))
    outcome = validate(request.model_copy(update={"object": mutated}), ENFORCE_EVERYWHERE)
    assert outcome.decision == "denied" and outcome.response.allowed is False
    assert "not a whole number" in (outcome.response.status.message if outcome.response.status else "")


@given(review=kserve.isvc_reviews(fractional_gpu=True))
def test_an_inference_service_asking_for_a_fractional_gpu_is_never_allowed_in_enforce_mode(
    review: dict[str, Any]
) -> None:
    outcome = validate(parse_review(kserve.compact(review)).request, ENFORCE_EVERYWHERE)
    assert outcome.decision == "denied" and outcome.response.allowed is False


@pytest.fixture(scope="module")
def server() -> Iterator[InProcessServer]:
    with InProcessServer(POLICIES["default"]) as running:
        yield running


def post(server: InProcessServer, path: str, body: bytes) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


reviews = st.one_of(kserve.pod_reviews(realistic=False, in_scope=None,
                                       operations=("CREATE", "UPDATE", "DELETE", "CONNECT")),
                    kserve.isvc_reviews(), kserve.isvc_reviews(fractional_gpu=True))


def _parses(body: bytes) -> bool:
    try:
        parse_review(body)
    except InvalidReview:
        return False
    return True


@fewer(2)
@given(body=st.one_of(reviews.map(kserve.compact), kserve.malformed_bodies(reviews)),
       path=st.sampled_from(("/validate", "/mutate")))
def test_the_server_answers_every_body_with_200_or_400_and_never_5xx(
    server: InProcessServer, body: bytes, path: str
) -> None:
    status, reply = post(server, path, body)
    if _parses(body):
        review = json.loads(body)
        assert status == 200, reply
        assert reply["apiVersion"] == review["apiVersion"]
        assert reply["response"]["uid"] == review["request"]["uid"]
    else:
        assert status == 400, reply
        assert isinstance(reply["error"], str) and reply["error"]

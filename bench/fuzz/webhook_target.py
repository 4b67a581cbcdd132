"""Fuzz target: the webhook's request parsing, its decisions and the /mutate memo, with the invariants they promise.

Every input is a request body: either the raw bytes, when they start like JSON (libFuzzer mutating real
AdmissionReviews from the seed corpus), or else a seed review edited as the bytes say by `jsonfuzz.mutated_json`. Each body goes through
what the server does, and these must hold (a violation raises `InvariantBroken`, which libFuzzer reports as a crash
and saves the input for):

- sent under a `Content-Encoding` (`jsonfuzz.on_the_wire`: gzip, deflate, and broken, unknown and oversized
  encodings), the server's body reader gives back exactly the body or refuses it with the 4xx the encoding calls
  for, and raises nothing else (`jsonfuzz.WireBroken`); what it gives back is what the checks below see;
- parsing raises nothing but the documented `InvalidReview`, and the lean `pod_view` parse accepts exactly the
  bodies the whole parse accepts and decides exactly as it does;
- neither decision raises, for any policy; every /mutate patch applies to the object and a second admission of the
  result yields no patch;
- no wrong allows: /validate in enforce mode denies every in-scope pod CREATE (and InferenceService) whose GPU
  quantities an independent reference (`definitely_not_whole`, written with `decimal`, not gpuguard's parser) says
  are not whole numbers, that mixes whole GPUs with MIG devices in one container, or runs a GPU container privileged;
- the memo (one instance across all inputs, as in a running server) answers nothing for a body that does not parse,
  and whatever it recalls, for this body or this body with another uid, equals a fresh decision byte for byte.
"""

from __future__ import annotations

import copy
import decimal
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["gpuguard", "webhook"]):
    from gpuguard.contracts.admission import AdmissionRequest, InvalidReview, decode_patch, encode_reply, parse_review
    from gpuguard.policy.loading import default_policy, default_policy_text, parse_policy
    from gpuguard.policy.model import Policy
    from gpuguard.web.bodies import decode_body  # noqa: F401  (instrumented here; jsonfuzz.read_wire calls it)
    from webhook.memo import Answer, MutationMemo, Unknown
    from webhook.review import mutate, validate
    from webhook.settings import MAX_BODY_BYTES

import jsonpatch
import yaml

from bench.fuzz import jsonfuzz

ROOT = Path(__file__).resolve().parents[2]
GPU_NAMES = ("nvidia.com/gpu", "nvidia.com/gpu.shared", "amd.com/gpu", "intel.com/gpu", "habana.ai/gaudi")
MIG_PREFIX = "nvidia.com/mig-"


class InvariantBroken(AssertionError):
    """A promise of the webhook did not hold for this input."""


def _policy(**changes: Any) -> Policy:
    document = yaml.safe_load(default_policy_text())
    document.update(changes)
    return parse_policy(yaml.safe_dump(document))


ENFORCE = _policy(namespaces={})
"""enforce everywhere; gpuguard.io/skip is not in userOverrides, so nobody can opt out."""
POLICIES = (default_policy(), _policy(mode="warn", userOverrides=["gpu-count", "mig-profile", "skip"]), ENFORCE)
stats: Counter[str] = Counter()
memo = MutationMemo(capacity=256)


def seeds() -> list[Any]:
    """Realistic AdmissionReviews: the canonical payloads of the tests plus generated pods and InferenceServices."""
    found = [json.loads(p.read_text()) for p in sorted((ROOT / "tests" / "data").glob("review-*.json"))]
    found.append(json.loads((ROOT / "bench" / "data" / "review-predictor-4.6kb.json").read_text()))
    return found + _generated(40)


def _generated(count: int) -> list[Any]:
    from hypothesis import strategies as st

    from tests.strategies import kserve

    return jsonfuzz.examples(st.one_of(kserve.pod_reviews(realistic=False, in_scope=None), kserve.isvc_reviews(),
                                       kserve.pod_reviews(fractional_gpu=True)), count)


SEEDS = seeds()


def corpus() -> Iterator[bytes]:
    """Initial inputs: every seed as raw bytes, and a few structured-mode starts."""
    for seed in SEEDS:
        yield json.dumps(seed, separators=(",", ":")).encode()
    for index in range(1, 33):
        yield bytes([index]) * 96


_GPU_KEYS = ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb", "nvidia.com/mig-3g.40gb", "nvidia.com/gpu.shared",
             "amd.com/gpu")
_POD = ("request", "object")
_CONTAINER = ("spec", ("containers", "containers", "initContainers"), "*")
FOCUS: tuple[jsonfuzz.Focus, ...] = (
    (*_POD, *_CONTAINER, "resources", ("limits", "requests"), _GPU_KEYS),
    (*_POD, *_CONTAINER, "resources", ("limits", "requests"), _GPU_KEYS),
    (*_POD, *_CONTAINER, "resources", ("limits", "requests")),
    (*_POD, *_CONTAINER, "resources"),
    (*_POD, *_CONTAINER, ("securityContext", "command", "args", "name", "image")),
    (*_POD, *_CONTAINER, "securityContext", "privileged"),
    (*_POD, "metadata", "annotations", ("gpuguard.io/gpu-count", "gpuguard.io/mig-profile", "gpuguard.io/sharing",
                                        "gpuguard.io/gpu-product", "gpuguard.io/skip",
                                        "serving.kserve.io/enable-prometheus-scraping")),
    (*_POD, "metadata", ("labels", "annotations", "namespace", "name", "generateName")),
    (*_POD, "metadata", "labels", ("serving.kserve.io/inferenceservice", "component")),
    (*_POD, "spec", ("tolerations", "nodeSelector", "schedulerName", "containers", "initContainers")),
    (*_POD, "spec", "nodeSelector", ("nvidia.com/gpu.product", "nvidia.com/gpu.present")),
    (*_POD, "spec", "predictor", ("model", "sklearn", "workerSpec", "containers", "nodeSelector")),
    (*_POD, "spec", "predictor", "model", "resources", ("limits", "requests"), _GPU_KEYS),
    (*_POD, "spec", "predictor", "model", ("modelFormat", "runtime")),
    ("request", ("uid", "operation", "namespace", "name", "subResource", "kind", "object", "oldObject", "dryRun")),
    ("request", "kind", ("group", "kind", "version")),
    (("apiVersion", "kind", "request"),),
)
"""Where the decisions read: the structured mode puts half of its edits here."""

DICTIONARY = (
    b'"uid":"', b'"nvidia.com/gpu"', b'"nvidia.com/mig-1g.10gb"', b"Infinity", b"NaN", b"-Infinity", b"1e999",
    b'"0.5"', b'"500m"', b'"kserve-container"', b'"serving.kserve.io/inferenceservice"', b'"component"',
    b'"predictor"', b'"CREATE"', b'"UPDATE"', b'"gpuguard.io/skip"', b'"privileged":true', b'"initContainers"',
    b'"limits"', b'"requests"', b'"admission.k8s.io/v1beta1"', b"\\u0000", b"null", b"[]", b"{}",
    b'"\\ud800"', b"[[[[[[[[[[[[[[[[", b'{"a":{"a":{"a":',
)


def test_one_input(data: bytes) -> None:
    decoded = jsonfuzz.received(data, SEEDS, FOCUS, MAX_BODY_BYTES, stats)
    if decoded is None:
        return
    stats["nested-900-deep"] += jsonfuzz.nesting(decoded) > 900
    check(decoded)


def check(body: bytes) -> None:
    whole = _parse(body, pod_view=False)
    lean = _parse(body, pod_view=True)
    if (whole is None) != (lean is None):
        raise InvariantBroken("the pod_view parse and the whole parse disagree on whether the body is valid")
    recalled = memo.recall(body, generation=1)
    if whole is None or lean is None:
        stats["invalid"] += 1
        if isinstance(recalled, Answer):
            raise InvariantBroken("the memo answered a body that is not an AdmissionReview")
        return
    stats["valid"] += 1
    request = whole.request
    for policy in POLICIES:
        _check_mutation(request, lean.request, policy)
        stats[f"validate-{validate(request, policy).decision}"] += 1
    _check_no_wrong_allow(request)
    _check_memo(body, recalled)


def _parse(body: bytes, *, pod_view: bool) -> Any:
    try:
        return parse_review(body, pod_view=pod_view)
    except InvalidReview:
        return None


def _check_mutation(request: AdmissionRequest, lean: AdmissionRequest, policy: Policy) -> None:
    outcome = mutate(request, policy)
    if mutate(lean, policy) != outcome:
        raise InvariantBroken("the pod_view parse decided differently from the whole parse")
    stats[f"mutate-{outcome.decision}"] += 1
    ops = decode_patch(outcome.response)
    if not ops:
        return
    try:
        result = jsonpatch.apply_patch(copy.deepcopy(request.object), ops)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
        raise InvariantBroken(f"the patch does not apply to the object: {error}") from None
    if decode_patch(mutate(request.model_copy(update={"object": result}), policy).response):
        raise InvariantBroken("admitting the mutated pod again changed it again")


def _check_memo(body: bytes, recalled: Answer | Unknown) -> None:
    review = parse_review(body, pod_view=True)
    if isinstance(recalled, Answer):
        stats["memo-recalled"] += 1
        if recalled.reply != _fresh(body):
            raise InvariantBroken("the memo recalled an answer that differs from a fresh decision")
    elif memo.answer(recalled, review, ENFORCE).reply != _fresh(body, ENFORCE):
        raise InvariantBroken("the memo's first answer differs from a fresh decision")
    uid = review.request.uid
    if re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", uid) and body.count(f'"uid":"{uid}"'.encode()) == 1:
        other = body.replace(f'"uid":"{uid}"'.encode(), b'"uid":"fuzz-other-uid"')
        again = memo.recall(other, generation=1)
        if isinstance(again, Answer):
            stats["memo-recalled-other-uid"] += 1
            if again.reply != _fresh(other, ENFORCE):
                raise InvariantBroken("the memo's answer for another uid differs from a fresh decision")


def _fresh(body: bytes, policy: Policy = ENFORCE) -> bytes:
    review = parse_review(body)
    return encode_reply(review.api_version, mutate(review.request, policy).response)


# ---------------------------------------------------------------- the wrong-allow oracle, independent of gpuguard


def _check_no_wrong_allow(request: AdmissionRequest) -> None:
    reason = _must_deny(request)
    if reason is None:
        return
    stats["must-deny"] += 1
    outcome = validate(request, ENFORCE)
    if outcome.response.allowed:
        raise InvariantBroken(f"/validate allowed in enforce mode what must be denied: {reason}")


def _must_deny(request: AdmissionRequest) -> str | None:
    obj = request.object
    if not isinstance(obj, dict) or request.sub_resource:
        return None
    kind = (request.kind.group, request.kind.kind)
    if kind == ("", "Pod") and request.operation == "CREATE" and _in_scope(obj):
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        containers = [c for key in ("containers", "initContainers")
                      for c in (spec.get(key) if isinstance(spec.get(key), list) else []) if isinstance(c, dict)]
        return next(filter(None, map(_container_must_be_denied, containers)), None)
    if kind == ("serving.kserve.io", "InferenceService") and request.operation in ("CREATE", "UPDATE"):
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        predictor = spec.get("predictor") if isinstance(spec.get("predictor"), dict) else {}
        model = predictor.get("model")
        return _container_must_be_denied(model) if isinstance(model, dict) else None
    return None


def _in_scope(pod: dict[str, Any]) -> bool:
    metadata = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    labels = metadata.get("labels") if isinstance(metadata.get("labels"), dict) else {}
    return "serving.kserve.io/inferenceservice" in labels and labels.get("component", "predictor") == "predictor"


def _container_must_be_denied(container: dict[str, Any]) -> str | None:
    resources = container.get("resources") if isinstance(container.get("resources"), dict) else {}
    gpu: dict[str, list[Any]] = {}
    for section in ("limits", "requests"):
        values = resources.get(section)
        for name, value in (values.items() if isinstance(values, dict) else ()):
            if (name in GPU_NAMES or name.startswith(MIG_PREFIX)) and value is not None:  # null: as if absent
                gpu.setdefault(name, []).append(value)
    for name, values in gpu.items():
        for value in values:
            if definitely_not_whole(value):
                return f"{name}: {value!r} is not a whole number"
    if "nvidia.com/gpu" in gpu and any(name.startswith(MIG_PREFIX) for name in gpu):
        return "whole GPUs and MIG devices in one container"
    context = container.get("securityContext")
    if gpu and isinstance(context, dict) and context.get("privileged") is True:
        return "a privileged GPU container"
    return None


_NUMBER = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]*|[eE][+-]?[0-9]+)")
_SCALE = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def definitely_not_whole(value: Any) -> bool:
    """True when a GPU quantity is certainly not a non-negative whole number (what Kubernetes would take).

    null is not: kube-apiserver decodes a null quantity as 0 in a pod and prunes it from a custom resource, so a
    null entry reads as an absent one.
    """
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return True
    if isinstance(value, int):
        return value < 0
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf")) or value < 0 or not value.is_integer()
    match = _NUMBER.fullmatch(value.strip())
    if match is None or len(value) > 64:
        return True  # not a quantity at all (gpuguard refuses over-long text as such, too)
    sign, number, suffix = match.groups()
    if suffix in _SCALE:
        exponent = _SCALE[suffix]
    elif re.fullmatch(r"[eE][+-]?[0-9]+", suffix):
        exponent = int(suffix[1:]) if len(suffix) < 12 else (10**12 if suffix[1:2] != "-" else -(10**12))
    elif suffix in _BINARY:
        return sign == "-" and decimal.Decimal(number) != 0
    else:
        return True
    if abs(exponent) > 999:
        return exponent < 0 and decimal.Decimal(number) != 0  # a huge positive exponent is whole
    with decimal.localcontext() as context:
        context.prec = 2000
        amount = decimal.Decimal(number).scaleb(exponent)
        return (sign == "-" and amount != 0) or amount != amount.to_integral_value()


def report() -> dict[str, int]:
    return dict(stats)

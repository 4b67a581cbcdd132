"""Values no Kubernetes client would send, but a hostile or broken one can: refused as wrong, never a crash or a hang.

Each case here was found by fuzzing (bench/fuzz/) or the property tests and used to raise inside the decision, which
the server answers per `on_internal_error` (allow, by default): a pod asking for a NaN or 1e999999999 GPUs was let
through, or held the event loop for minutes. They are now denied as what they are: not whole numbers.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from gpuguard.policy.loading import default_policy
from gpuguard.policy.quantity import MAX_WHOLE, QuantityError, parse_quantity, quoted, whole_number
from tests.conftest import admission_request, with_object
from webhook.review import mutate, validate

HOSTILE_QUANTITIES = [
    pytest.param(float("inf"), id="infinity"),
    pytest.param(float("-inf"), id="minus-infinity"),
    pytest.param(float("nan"), id="nan"),
    pytest.param("0." + "5" * 5000, id="5000-digits"),
    pytest.param("1" * 5000, id="5000-digit-integer-text"),
    pytest.param("1e999999999", id="huge-exponent"),
    pytest.param("1e-999999999", id="tiny-exponent"),
    pytest.param("1e", id="bare-e"),
    pytest.param("5ex", id="e-and-letters"),
    pytest.param("1e1000", id="four-digit-exponent"),
]


@pytest.mark.parametrize("value", HOSTILE_QUANTITIES)
def test_a_hostile_quantity_is_not_a_quantity_and_is_refused_at_once(value: Any) -> None:
    started = time.process_time()
    with pytest.raises(QuantityError):
        parse_quantity(value)
    assert whole_number(value) is None
    # A guard against a hang, not a speed target: 1e999999999 used to take minutes of CPU and gigabytes.
    assert time.process_time() - started < 5.0, "refused before any arithmetic"


def test_quantities_beyond_int64_read_as_kubernetes_caps_them() -> None:
    assert whole_number("1e999") == MAX_WHOLE
    assert whole_number(10**4000) == MAX_WHOLE
    assert whole_number("9E") == 9 * 10**18


def test_messages_quote_user_values_cut_short() -> None:
    assert quoted("x" * 10_000) == repr("x" * 63)[:64] + "... (10002 characters)"
    assert quoted("0.5") == "'0.5'"


def pod_request(container_changes: dict[str, Any], *, node_selector: Any = None) -> Any:
    request = admission_request("review-standard-custom.json", namespace="models")
    pod = copy.deepcopy(request.object)
    assert pod is not None
    pod["spec"]["containers"][0].update(container_changes)
    if node_selector is not None:
        pod["spec"]["nodeSelector"] = node_selector
    return with_object(request, pod)


@pytest.mark.parametrize("value", HOSTILE_QUANTITIES)
def test_a_pod_asking_for_a_hostile_gpu_quantity_is_denied_not_let_through(value: Any) -> None:
    request = pod_request({"resources": {"limits": {"nvidia.com/gpu": value}}})
    outcome = validate(request, default_policy())
    assert outcome.decision == "denied"
    assert outcome.response.status is not None and "not a whole number" in outcome.response.status.message
    assert len(outcome.response.status.message) < 2000, "the offending value is quoted cut short"


@pytest.mark.parametrize("command", ["tritonserver", 7, {"a": 1}, None])
def test_a_command_that_is_not_a_list_reads_as_no_command(command: Any) -> None:
    request = pod_request({"command": command, "args": command, "image": "example/model:1",
                           "resources": {"limits": {"nvidia.com/gpu": "0.5"}}})
    assert mutate(request, default_policy()).response.allowed
    assert validate(request, default_policy()).decision == "denied"


@pytest.mark.parametrize("product", [7, 1.5, ["NVIDIA-H200"], {"a": "b"}, None])
def test_a_gpu_product_selector_that_is_not_text_is_ignored_not_a_crash(product: Any) -> None:
    request = pod_request({"resources": {"limits": {"nvidia.com/mig-3g.40gb": "1"}}},
                          node_selector={"nvidia.com/gpu.product": product})
    assert validate(request, default_policy()).decision == "allowed"

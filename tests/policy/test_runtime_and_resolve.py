"""Which runtime a model container runs, and which settings apply to an object."""

from __future__ import annotations

from typing import Any

import pytest

from gpuguard.policy.model import Policy
from gpuguard.policy.quantity import QuantityError, parse_quantity, whole_number
from gpuguard.policy.resolve import namespace_mode_and_limits, resolve
from gpuguard.policy.runtime import RUNTIME_IMAGES, runtime_of_container, runtime_of_model_format
from tests.conftest import policy_with


@pytest.mark.parametrize(
    ("container", "runtime"),
    [
        ({"image": "nvcr.io/nvidia/tritonserver:23.05-py3", "args": ["tritonserver"]}, "triton"),
        ({"image": "registry.local:5000/mirror/tritonserver@sha256:abc"}, "triton"),
        ({"image": "vllm/vllm-openai:v0.6.3"}, "vllm"),
        ({"image": "python:3.11", "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"]}, "vllm"),
        ({"image": "kserve/huggingfaceserver:v0.14.0", "args": ["--backend=vllm"]}, "huggingface"),
        ({"image": "kserve/sklearnserver:v0.14.0"}, "sklearn"),
        ({"image": "kserve/xgbserver:v0.14.0"}, "xgboost"),
        ({"image": "kserve/lgbserver:v0.14.0"}, "lightgbm"),
        ({"image": "tensorflow/serving:2.6.2"}, "tensorflow"),
        ({"image": "pytorch/torchserve-kfs:0.9.0"}, "pytorch"),
        ({"image": "ghcr.io/acme/app:1", "command": ["tritonserver", "--model-store=/m"]}, "triton"),
        ({"image": "ghcr.io/acme/app:1", "args": ["--model", "huggingface/bert"]}, "custom"),
        ({}, "custom"),
    ],
)
def test_runtime_is_recognised_from_image_then_command(container: dict[str, Any], runtime: str) -> None:
    assert runtime_of_container(container) == runtime


@pytest.mark.parametrize(
    ("model_format", "serving_runtime", "runtime"),
    [("sklearn", None, "sklearn"), ("onnx", None, "onnx"), ("onnx", "kserve-tritonserver", "triton"),
     ("tensorrt", None, "triton"), ("mystery", None, "custom")],
)
def test_inference_service_runtime_comes_from_format_or_serving_runtime(
    model_format: str, serving_runtime: str | None, runtime: str
) -> None:
    assert runtime_of_model_format(model_format, serving_runtime) == runtime


@pytest.mark.parametrize(("runtime", "image"), list(RUNTIME_IMAGES.items()))
def test_each_stock_runtime_image_is_recognised_as_its_runtime(runtime: str, image: str) -> None:
    assert runtime_of_container({"image": image}) == runtime


def test_an_exact_namespace_wins_over_an_earlier_glob() -> None:
    policy = policy_with(namespaces={"team-*": {"mode": "warn"}, "team-prod": {"mode": "enforce"},
                                     "team-dev": {"limits": {"maxGpusPerPod": 1}}})
    assert namespace_mode_and_limits(policy, "team-prod")[0] == "enforce"
    assert namespace_mode_and_limits(policy, "team-x")[0] == "warn"
    mode, limits = namespace_mode_and_limits(policy, "team-dev")
    assert (mode, limits.max_gpus_per_pod, limits.allow_time_slicing) == ("enforce", 1, True)


def test_the_first_matching_rule_wins_and_replaces_only_the_keys_it_sets(policy: Policy) -> None:
    effective = resolve(policy, namespace="llm-prod", runtime="vllm", labels={}, annotations={})
    assert effective.rule == "llm"
    assert effective.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert effective.scheduler_name == "gpuguard-scheduler", "inherited from defaults"
    assert resolve(policy, namespace="models", runtime="vllm", labels={}, annotations={}).rule == "defaults"


def test_rules_can_match_pod_labels() -> None:
    policy = policy_with(rules=[{"name": "tier", "match": {"labels": {"tier": "gold"}}, "gpu": {"count": 2}}])
    assert resolve(policy, namespace="x", runtime="custom", labels={"tier": "gold"}, annotations={}).rule == "tier"
    assert resolve(policy, namespace="x", runtime="custom", labels={"tier": "iron"}, annotations={}).rule == "defaults"


@pytest.mark.parametrize(
    ("value", "exact", "whole"),
    [("1", 1, 1), ("1000m", 1, 1), ("500m", 0.5, None), ("0.5", 0.5, None), ("1e3", 1000, 1000), (2, 2, 2),
     ("1Ki", 1024, 1024), ("-1", -1, None)],
)
def test_quantities_are_parsed_exactly(value: object, exact: float, whole: int | None) -> None:
    assert parse_quantity(value) == exact
    assert whole_number(value) == whole


@pytest.mark.parametrize("value", ["one", "1.2.3", "", "1 GPU", True, None])
def test_non_quantities_are_refused(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(value)

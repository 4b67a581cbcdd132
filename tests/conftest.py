"""Shared fixtures and helpers: the canonical payloads in tests/data and the default policy."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from gpuguard.contracts.admission import AdmissionRequest, AdmissionResponse, decode_patch, parse_review
from gpuguard.policy.loading import default_policy, default_policy_text, parse_policy
from gpuguard.policy.model import Policy
from tests.strategies import profiles

profiles.register()  # before the hypothesis plugin applies --hypothesis-profile

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def load_data(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def review_body(name: str) -> bytes:
    return (DATA / name).read_bytes()


def admission_request(name: str, **changes: Any) -> AdmissionRequest:
    """The request of a canonical AdmissionReview in tests/data, with top-level fields changed."""
    request = parse_review(review_body(name)).request
    return request.model_copy(update=changes) if changes else request


def with_object(request: AdmissionRequest, obj: dict[str, Any]) -> AdmissionRequest:
    return request.model_copy(update={"object": obj})


def patched(request: AdmissionRequest, response: AdmissionResponse) -> dict[str, Any]:
    """The object as kube-apiserver stores it after applying the response's JSON Patch."""
    assert request.object is not None
    original = copy.deepcopy(request.object)
    ops = decode_patch(response)
    return jsonpatch.apply_patch(original, ops) if ops else original


def policy_with(**changes: Any) -> Policy:
    """The default policy with top-level YAML keys replaced (given in their YAML spelling)."""
    import yaml

    document = yaml.safe_load(default_policy_text())
    document.update(changes)
    return parse_policy(yaml.safe_dump(document))


@pytest.fixture(scope="session")
def policy() -> Policy:
    return default_policy()

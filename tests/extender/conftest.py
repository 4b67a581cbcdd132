"""Fixtures for the extender tests: the canonical cluster and ExtenderArgs payloads in tests/data/extender."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gpuguard.policy.loading import default_policy
from gpuguard.policy.model import Policy

DATA = Path(__file__).resolve().parent.parent / "data" / "extender"
CLUSTER = DATA / "cluster.json"
INVENTORY_TIME = datetime.fromisoformat("2026-03-02T10:00:00+00:00").timestamp()
"""The `ts` of every inventory annotation in cluster.json."""

PAYLOADS = {
    "names": "args-names-vllm.json",
    "names-lowercase": "args-names-lowercase-mig.json",
    "nodes": "args-nodes-vllm.json",
    "nodes-lowercase": "args-nodes-lowercase-mig.json",
}


def payload(name: str) -> bytes:
    return (DATA / PAYLOADS.get(name, name)).read_bytes()


def cluster_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(CLUSTER.read_text())["items"]
    return items


def cluster_node(name: str) -> dict[str, Any]:
    return next(i for i in cluster_items() if i["kind"] == "Node" and i["metadata"]["name"] == name)


def cluster_pods() -> list[dict[str, Any]]:
    return [i for i in cluster_items() if i["kind"] == "Pod"]


def policy_text(**scheduling: Any) -> str:
    """The default policy with `scheduling` keys replaced (YAML spelling), as text."""
    import yaml

    from gpuguard.policy.loading import default_policy_text

    document = yaml.safe_load(default_policy_text())
    document["scheduling"] = {**document["scheduling"], **scheduling}
    return yaml.safe_dump(document)


def policy_with(**scheduling: Any) -> Policy:
    from gpuguard.policy.loading import parse_policy

    return parse_policy(policy_text(**scheduling))


@pytest.fixture(scope="session")
def scheduling_default() -> Any:
    return default_policy().scheduling

"""The README's KubeSchedulerConfiguration snippet stays true to the extender and the MIG catalog."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from gpuguard.policy.mig import all_mig_resource_names
from gpuguard.policy.model import parse_duration
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import DEFAULT_PORT, ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard

README = Path(__file__).resolve().parents[2] / "README.md"
# kube-scheduler validates each managed resource as an extended resource name: a DNS-subdomain prefix, a slash, and
# a qualified name of at most 63 characters
EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@pytest.fixture(scope="module")
def extender() -> dict[str, Any]:
    text = README.read_text()
    snippet = text.split("<!-- extender-config -->")[1].split("<!-- /extender-config -->")[0]
    config = yaml.safe_load(snippet.strip().removeprefix("```yaml").removesuffix("```"))
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1" and config["kind"] == "KubeSchedulerConfiguration"
    assert [p["schedulerName"] for p in config["profiles"]] == ["gpuguard-scheduler"]
    (entry,) = config["extenders"]
    return dict(entry)


def test_managed_resources_list_every_mig_resource_of_the_catalog_without_wildcards(extender: dict[str, Any]) -> None:
    names = [r["name"] for r in extender["managedResources"]]
    assert len(names) == len(set(names)), "kube-scheduler rejects duplicate managed resources"
    assert set(names) == {"nvidia.com/gpu", "nvidia.com/gpu.shared", *all_mig_resource_names()}
    assert all(EXTENDED_RESOURCE.match(n) for n in names)


def test_the_verbs_and_port_are_the_ones_the_extender_serves(extender: dict[str, Any], tmp_path: Path) -> None:
    registry = CollectorRegistry()
    app = create_app(ExtenderSettings(), policy=PolicySource(None, registry=registry), registry=registry,
                     store=InventoryStore(), board=UtilizationBoard())
    posts = {r.resource.canonical for r in app.router.routes() if r.method == "POST" and r.resource is not None}
    assert extender["urlPrefix"] == f"http://127.0.0.1:{DEFAULT_PORT}"
    assert {f"/{extender['filterVerb']}", f"/{extender['prioritizeVerb']}"} == posts
    assert "bindVerb" not in extender and "preemptVerb" not in extender


def test_the_remaining_settings_are_valid_and_deliberate(extender: dict[str, Any]) -> None:
    assert extender["weight"] > 0, "a prioritize verb needs a positive weight"
    assert extender["nodeCacheCapable"] is True and extender["enableHTTPS"] is False
    assert extender["ignorable"] is True
    assert 0 < parse_duration(extender["httpTimeout"]) <= 5


def test_the_dra_configuration_asks_the_extender_about_every_pod() -> None:
    text = README.read_text()
    snippet = text.split("<!-- extender-config-dra -->")[1].split("<!-- /extender-config-dra -->")[0]
    config = yaml.safe_load(snippet.strip().removeprefix("```yaml").removesuffix("```"))
    (entry,) = config["extenders"]
    assert "managedResources" not in entry, "kube-scheduler would never call the extender for claim pods"
    assert entry["urlPrefix"] == f"http://127.0.0.1:{DEFAULT_PORT}" and entry["nodeCacheCapable"] is True
    disabled = [p["name"] for p in config["profiles"][0]["plugins"].get("filter", {}).get("disabled", [])]
    assert "DynamicResources" not in disabled and entry["ignorable"] is True

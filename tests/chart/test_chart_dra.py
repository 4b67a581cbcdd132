"""The chart on a DRA cluster (`dra.enabled`): the templates reconciler and the extender's DRA watch switched on,
each with only the RBAC it needs, and a scheduler that asks the extender about every pod."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.chart.helm import NAMESPACE, Rendered, render
from tests.chart.test_chart_security import rules_bound_to
from tests.webhook.test_dra_claims import DRA_VERSIONS

DRA = ("dra-values.yaml",)


def container(rendered: Rendered, deployment: str, name: str) -> dict[str, object]:
    spec = rendered.get("Deployment", deployment)["spec"]["template"]["spec"]
    found: dict[str, object] = next(c for c in spec["containers"] if c["name"] == name)
    return found


def scheduler_config(rendered: Rendered) -> dict[str, object]:
    config: dict[str, object] = yaml.safe_load(rendered.get("ConfigMap", "gpuguard-scheduler")["data"]["config.yaml"])
    return config


def test_the_webhook_reconciles_templates_with_exactly_the_permissions_it_uses() -> None:
    rendered = render(DRA)
    args = container(rendered, "gpuguard-webhook", "webhook")["args"]
    assert isinstance(args, list) and "--claim-templates" in args and "--in-cluster" in args
    assert "--exclude-namespaces=batch-jobs" in args
    spec = rendered.get("Deployment", "gpuguard-webhook")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is True
    assert rules_bound_to(rendered, "gpuguard-webhook") == {
        ("gpuguard-webhook-claim-templates", None): [
            {"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["list", "watch"]},
            {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaimtemplates"],
             "verbs": ["list", "watch", "create", "delete"]},
        ],
        ("gpuguard-webhook-claim-templates-lease", NAMESPACE): [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["gpuguard-claim-templates"], "verbs": ["get", "update"]},
        ],
    }


def test_the_lease_the_chart_grants_is_the_one_the_reconciler_takes() -> None:
    from gpuguard.k8s.claim_templates import LeaseSettings

    role = render(DRA).get("Role", "gpuguard-webhook-claim-templates-lease")
    assert role["rules"][1]["resourceNames"] == [LeaseSettings().name]


def test_the_extender_watches_the_dra_objects_and_is_asked_about_every_pod() -> None:
    rendered = render(DRA)
    args = container(rendered, "gpuguard-scheduler", "extender")["args"]
    assert isinstance(args, list) and "--watch-dra" in args
    (extender,) = scheduler_config(rendered)["extenders"]  # type: ignore[misc]
    assert "managedResources" not in extender
    assert rules_bound_to(rendered, "gpuguard-scheduler")[("gpuguard-scheduler-dra", None)] == [
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices", "resourceclaims", "resourceclaimtemplates"],
         "verbs": ["list", "watch"]}]


def test_without_dra_nothing_of_it_is_rendered(default_render: Rendered) -> None:
    assert not default_render.names("ClusterRole") & {"gpuguard-webhook-claim-templates", "gpuguard-scheduler-dra"}
    assert "--watch-dra" not in container(default_render, "gpuguard-scheduler", "extender")["args"]  # type: ignore[operator]
    (extender,) = scheduler_config(default_render)["extenders"]  # type: ignore[misc]
    assert extender["managedResources"]


@pytest.mark.parametrize("version", DRA_VERSIONS)
def test_every_object_of_a_dra_install_is_schema_valid(version: str) -> None:
    for obj in render(DRA, kube_version=version).objects:
        if obj["apiVersion"].split("/")[0] in ("cert-manager.io", "monitoring.coreos.com"):
            continue  # CRDs: not in the Kubernetes schemas (tests/chart/test_chart_rendering.py checks them)
        kubernetes_validate.validate(obj, version, strict=True)

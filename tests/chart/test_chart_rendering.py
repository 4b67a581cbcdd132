"""`helm lint` and `helm template` for the defaults and every ci/ scenario, and every object checked against a schema.

Core kinds are validated with `kubernetes-validate --strict` (the official OpenAPI schemas: unknown fields are
errors) for Kubernetes 1.29 and 1.37. cert-manager's Certificate/Issuer and prometheus-operator's ServiceMonitor are
CRDs that those schemas do not contain: they are checked against small schemas of our own in tests/chart/schemas/
(the fields we render and the ones the CRDs require; PrometheusRule's spec as its CRD defines it), not against the
projects' full CRDs.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.helm import CHART, KUBE_VERSIONS, NAMESPACE, SCENARIOS, Obj, render, run_helm

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "certificate.json",
    ("cert-manager.io/v1", "Issuer"): "issuer.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}
DEFAULT_KINDS = {
    "ConfigMap", "Service", "ServiceAccount", "Deployment", "DaemonSet", "PodDisruptionBudget", "Job", "CronJob",
    "Pod", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
}
CASES = [((), version) for version in KUBE_VERSIONS] + [
    ((scenario,), version) for scenario in SCENARIOS for version in KUBE_VERSIONS
]


def validate(obj: Obj, kube_version: str) -> None:
    _validate_once(json.dumps(obj, sort_keys=True), kube_version)


@functools.lru_cache(maxsize=None)
def _validate_once(text: str, kube_version: str) -> None:
    """Most objects are identical across scenarios; each distinct one is validated once per version."""
    obj = json.loads(text)
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
        jsonschema.validate(obj, schema)
    else:
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_every_scenario_required_by_the_issue_exists() -> None:
    assert {"cert-manager-values.yaml", "self-managed-values.yaml", "agent-off-values.yaml",
            "extender-weight-values.yaml", "custom-policy-values.yaml"} <= set(SCENARIOS)


@pytest.mark.parametrize("values", [(), *((s,) for s in SCENARIOS)], ids=["defaults", *SCENARIOS])
def test_helm_lint_is_clean(values: tuple[str, ...]) -> None:
    args = ["lint", "--strict", "charts/gpuguard", "--namespace", NAMESPACE]
    for name in values:
        args += ["--values", f"charts/gpuguard/ci/{name}"]
    result = run_helm(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # helm lint reports a template's `fail` as INFO and still passes; validation.yaml must not fail at all.
    assert "Fail:" not in output and "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize(("values", "kube_version"), CASES, ids=[f"{'+'.join(v) or 'defaults'}@{k}" for v, k in CASES])
def test_every_rendered_object_passes_strict_schema_validation(values: tuple[str, ...], kube_version: str) -> None:
    rendered = render(values, kube_version=kube_version)
    assert rendered.objects
    for obj in rendered.objects:
        try:
            validate(obj, kube_version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} ({kube_version}): {error}")


def test_defaults_yield_a_complete_install(default_render: object) -> None:
    rendered = render()
    assert {obj["kind"] for obj in rendered.objects} == DEFAULT_KINDS
    assert rendered.names("Deployment") == {"gpuguard-webhook", "gpuguard-scheduler"}
    assert rendered.names("DaemonSet") == {"gpuguard-agent"}
    assert rendered.names("ConfigMap") == {"gpuguard-policy", "gpuguard-scheduler"}
    assert rendered.names("Service") == {"gpuguard-webhook", "gpuguard-scheduler", "gpuguard-agent"}


def test_cert_manager_scenario_renders_the_crd_kinds_that_the_own_schemas_check() -> None:
    kinds = {obj["kind"] for obj in render(("cert-manager-values.yaml",)).objects}
    monitoring = {obj["kind"] for obj in render(("monitoring-values.yaml",)).objects}
    assert {"Certificate", "Issuer"} <= kinds
    assert "ServiceMonitor" in monitoring


@pytest.mark.parametrize("bad", [
    {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x"}, "spec": {"dnsNames": ["a"]}},
    {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "x"}, "spec": {"ca": {}}},
    {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"},
     "spec": {"endpoints": [{"port": "metrics", "intervall": "30s"}], "selector": {}}},
])
def test_own_crd_schemas_reject_objects_missing_required_or_with_misspelt_fields(bad: Obj) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, KUBE_VERSIONS[0])


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The check above would be worthless if strict mode let unknown fields through."""
    deployment = next(o for o in render().objects if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, KUBE_VERSIONS[0])


def render_notes(tmp_path: Path, *sets: str) -> str:
    """NOTES.txt as `helm install` would print it. `helm template` never renders NOTES.txt, so a copy of the chart
    gets one more template that renders the notes' text through `tpl` into a document."""
    chart = tmp_path / "gpuguard"
    shutil.copytree(CHART, chart)
    (chart / "files" / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-preview.yaml").write_text('notes: {{ tpl (.Files.Get "files/notes.txt") . | toJson }}\n')
    args = ["template", "gpuguard", str(chart), "--namespace", NAMESPACE, "--show-only", "templates/notes-preview.yaml"]
    for item in sets:
        args += ["--set", item]
    result = run_helm(*args)
    assert result.returncode == 0, result.stderr
    return str(yaml.safe_load(result.stdout)["notes"])


def test_notes_tell_the_admin_how_to_verify_the_install_and_opt_a_namespace_out(tmp_path: Path) -> None:
    notes = render_notes(tmp_path)
    assert "helm test gpuguard -n gpuguard --logs" in notes
    assert "kubectl -n gpuguard rollout status deployment/gpuguard-webhook" in notes
    assert "kubectl label namespace NAMESPACE gpuguard.io/webhook=ignore" in notes
    assert "--dry-run=server" in notes and "serving.kserve.io/inferenceservice=check" in notes
    assert "Namespaces never intercepted: kube-system, gpuguard." in notes
    without_webhook = render_notes(tmp_path / "off", "webhook.enabled=false", "scheduler.enabled=false",
                                   "policy=apiVersion: gpuguard.io/v1\nkind: GpuPolicy\n")
    assert "gpuguard.io/webhook=ignore" not in without_webhook and "{{" not in without_webhook

"""The webhook can never block the cluster, and its caBundle always comes from one source.

The selectors are checked by behaviour: a small label-selector evaluator asks which namespaces and pods the API
server would send to the webhook, for every scenario.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.helm import (
    KUBE_VERSIONS,
    NAMESPACE,
    SCENARIOS,
    Obj,
    Rendered,
    render,
    render_with_existing_secret,
)

ALL = [(), *((s,) for s in SCENARIOS)]
IDS = ["defaults", *SCENARIOS]
ISVC_LABEL = "serving.kserve.io/inferenceservice"


def selector_matches(selector: Obj | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (an absent or empty selector matches everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def namespace_labels(name: str, **extra: str) -> dict[str, str]:
    """What the API server puts on every namespace, plus `extra`."""
    return {"kubernetes.io/metadata.name": name, **extra}


def webhooks(rendered: Rendered) -> list[Obj]:
    return [hook for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
            for config in rendered.of_kind(kind) for hook in config["webhooks"]]


def pod_webhooks(rendered: Rendered) -> list[Obj]:
    return [hook for hook in webhooks(rendered) if hook["rules"][0]["resources"] == ["pods"]]


def intercepted(hook: Obj, namespace: dict[str, str], labels: dict[str, str]) -> bool:
    return selector_matches(hook.get("namespaceSelector"), namespace) and selector_matches(
        hook.get("objectSelector"), labels)


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_the_webhook_never_sees_kube_system_its_own_namespace_or_opted_out_namespaces(values: tuple[str, ...]) -> None:
    predictor = {ISVC_LABEL: "model", "component": "predictor"}
    for hook in webhooks(render(values)):
        assert not intercepted(hook, namespace_labels("kube-system"), predictor), hook["name"]
        assert not intercepted(hook, namespace_labels(NAMESPACE), predictor), hook["name"]
        assert not intercepted(hook, namespace_labels("team-a", **{"gpuguard.io/webhook": "ignore"}), predictor)
        assert intercepted(hook, namespace_labels("team-a"), predictor), hook["name"]


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_only_inference_service_pods_reach_the_pod_webhooks(values: tuple[str, ...]) -> None:
    hooks = pod_webhooks(render(values))
    assert {hook["name"] for hook in hooks} == {"mutate.pods.gpuguard.io", "validate.pods.gpuguard.io"}
    user_namespace = namespace_labels("team-a")
    for hook in hooks:
        assert not intercepted(hook, user_namespace, {"app": "nginx"}), "an ordinary pod must never wait on us"
        assert not intercepted(hook, user_namespace, {ISVC_LABEL: "m", "gpuguard.io/webhook": "ignore"})
        assert intercepted(hook, user_namespace, {ISVC_LABEL: "m"})


def test_extra_excluded_namespaces_are_never_intercepted() -> None:
    for hook in webhooks(render(("self-managed-values.yaml",))):
        for name in ("kserve", "monitoring"):
            assert not intercepted(hook, namespace_labels(name), {ISVC_LABEL: "m"})


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_every_webhook_is_side_effect_free_and_speaks_both_review_versions(values: tuple[str, ...]) -> None:
    for hook in webhooks(render(values)):
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert 1 <= hook["timeoutSeconds"] <= 30


def test_the_mutating_webhook_handles_pod_creation_only_and_is_reinvoked_if_needed(default_render: Rendered) -> None:
    (config,) = default_render.of_kind("MutatingWebhookConfiguration")
    (hook,) = config["webhooks"]
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["clientConfig"]["service"]["path"] == "/mutate"


def test_inference_services_are_validated_on_create_and_update_only(default_render: Rendered) -> None:
    (config,) = default_render.of_kind("ValidatingWebhookConfiguration")
    rules = {hook["name"]: hook["rules"] for hook in config["webhooks"]}
    assert rules["validate.inferenceservices.gpuguard.io"] == [{
        "apiGroups": ["serving.kserve.io"], "apiVersions": ["v1beta1"], "operations": ["CREATE", "UPDATE"],
        "resources": ["inferenceservices"], "scope": "Namespaced"}]
    assert rules["validate.pods.gpuguard.io"][0]["operations"] == ["CREATE"]


@pytest.mark.parametrize(("values", "pods", "isvcs", "timeout"), [
    ((), "Fail", "Ignore", 5),
    (("self-managed-values.yaml",), "Ignore", "Ignore", 10),
])
def test_failure_policy_and_timeout_come_from_values(values: tuple[str, ...], pods: str, isvcs: str,
                                                     timeout: int) -> None:
    for hook in webhooks(render(values)):
        expected = isvcs if hook["name"].startswith("validate.inferenceservices") else pods
        assert (hook["failurePolicy"], hook["timeoutSeconds"]) == (expected, timeout), hook["name"]


@pytest.mark.parametrize(("kube_version", "expected"), [("1.25.0", False), *((v, True) for v in KUBE_VERSIONS)])
def test_match_conditions_skip_non_predictor_pods_where_the_api_server_supports_them(kube_version: str,
                                                                                    expected: bool) -> None:
    for hook in pod_webhooks(render(kube_version=kube_version)):
        conditions = hook.get("matchConditions", [])
        assert bool(conditions) == expected
        for condition in conditions:
            assert "'predictor'" in condition["expression"]


def test_every_webhook_calls_the_webhook_service_on_its_https_port(default_render: Rendered) -> None:
    service = default_render.get("Service", "gpuguard-webhook")
    port = next(p for p in service["spec"]["ports"] if p["name"] == "https")
    deployment = default_render.get("Deployment", "gpuguard-webhook")
    container_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert port["targetPort"] in container_ports
    for hook in webhooks(default_render):
        reference = hook["clientConfig"]["service"]
        assert (reference["name"], reference["namespace"], reference["port"]) == ("gpuguard-webhook", NAMESPACE,
                                                                                  port["port"])


def test_the_webhook_keeps_serving_through_rollouts_and_drains(default_render: Rendered) -> None:
    deployment = default_render.get("Deployment", "gpuguard-webhook")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname")
    budget = default_render.get("PodDisruptionBudget", "gpuguard-webhook")
    assert budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def served_secret(rendered: Rendered) -> str:
    deployment = rendered.get("Deployment", "gpuguard-webhook")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {item["key"] for item in volumes["tls"]["secret"]["items"]} == {"tls.crt", "tls.key"}, (
        "the webhook pods must mount the serving key pair and never the CA key")
    return str(volumes["tls"]["secret"]["secretName"])


def certificate_jobs(rendered: Rendered) -> list[Obj]:
    return [obj for obj in rendered.of_kind("Job") + rendered.of_kind("CronJob")
            if obj["metadata"]["labels"]["app.kubernetes.io/component"] == "certs"]


def container_args(obj: Obj) -> list[str]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Job" else (
        obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return list(spec["containers"][0]["args"])


def test_self_managed_mode_takes_the_ca_bundle_from_the_secret_the_webhook_serves(default_render: Rendered) -> None:
    secret = served_secret(default_render)
    for hook in webhooks(default_render):
        assert "caBundle" not in hook["clientConfig"], "no stale caBundle may be rendered (lookup finds none here)"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (config,) = default_render.of_kind(kind)
        assert "cert-manager.io/inject-ca-from" not in (config["metadata"].get("annotations") or {})
    jobs = certificate_jobs(default_render)
    phases = {obj["metadata"].get("annotations", {}).get("helm.sh/hook", "schedule") for obj in jobs}
    assert phases == {"pre-install,pre-upgrade", "post-install,post-upgrade", "schedule"}
    for job in jobs:
        args = container_args(job)
        assert args[1:3] == ["certs", "ensure"]
        assert {f"--secret={secret}", "--service-name=gpuguard-webhook",
                "--mutating-webhook-configuration=gpuguard-webhook",
                "--validating-webhook-configuration=gpuguard-webhook"} <= set(args)
    assert not default_render.of_kind("Certificate")


@pytest.mark.parametrize("values", [("cert-manager-values.yaml",), ("cert-manager-cluster-issuer-values.yaml",)])
def test_cert_manager_mode_injects_the_ca_of_the_certificate_whose_secret_the_webhook_serves(
    values: tuple[str, ...]
) -> None:
    rendered = render(values)
    secret = served_secret(rendered)
    (certificate,) = [c for c in rendered.of_kind("Certificate") if not c["spec"].get("isCA")]
    assert certificate["spec"]["secretName"] == secret
    assert "gpuguard-webhook.gpuguard.svc" in certificate["spec"]["dnsNames"]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (config,) = rendered.of_kind(kind)
        assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            f"{NAMESPACE}/{certificate['metadata']['name']}")
        assert all("caBundle" not in hook["clientConfig"] for hook in config["webhooks"])
    assert not certificate_jobs(rendered), "one source of truth, not two"


def test_the_chart_ca_signs_the_serving_certificate_and_an_existing_issuer_replaces_it() -> None:
    own = render(("cert-manager-values.yaml",))
    ca = next(c for c in own.of_kind("Certificate") if c["spec"].get("isCA"))
    serving = own.get("Certificate", "gpuguard-webhook")
    issuer = own.get("Issuer", serving["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    external = render(("cert-manager-cluster-issuer-values.yaml",))
    assert external.get("Certificate", "gpuguard-webhook")["spec"]["issuerRef"] == {
        "kind": "ClusterIssuer", "name": "internal-ca"}
    assert not external.of_kind("Issuer")


def test_the_renewal_cron_job_can_be_turned_off() -> None:
    rendered = render(("self-managed-values.yaml",))
    assert not rendered.of_kind("CronJob")
    assert len(certificate_jobs(rendered)) == 2


def test_without_the_webhook_nothing_certificate_related_is_rendered() -> None:
    rendered = render(sets=("webhook.enabled=false", "policy=" + _policy_without_scheduler()))
    assert not certificate_jobs(rendered)
    assert not any(obj["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Certificate",
                                   "Secret") for obj in rendered.objects)


def _policy_without_scheduler() -> str:
    return "apiVersion: gpuguard.io/v1\nkind: GpuPolicy\n"


def test_an_upgrade_renders_the_ca_bundle_the_secret_already_holds(tmp_path: Path) -> None:
    rendered = render_with_existing_secret(tmp_path, "Q0EgUEVN")
    assert {hook["clientConfig"]["caBundle"] for hook in webhooks(rendered)} == {"Q0EgUEVN"}
    assert len(webhooks(rendered)) == 3


def test_with_cert_manager_the_chart_never_renders_a_ca_bundle_even_if_a_secret_exists(tmp_path: Path) -> None:
    rendered = render_with_existing_secret(tmp_path, "Q0EgUEVN", "certificates.mode=certManager")
    assert all("caBundle" not in hook["clientConfig"] for hook in webhooks(rendered))

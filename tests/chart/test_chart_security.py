"""Least privilege: non-root, read-only root filesystems, and RBAC that grants each component only what it uses."""

from __future__ import annotations

import pytest
import yaml

from tests.chart.helm import CHART, NAMESPACE, ROOT, SCENARIOS, Obj, Rendered, load_values, render

ALL = [(), *((s,) for s in SCENARIOS)]
IDS = ["defaults", *SCENARIOS]
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                   "helm.sh/chart")


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


POD_RESOURCES = "/var/lib/kubelet/pod-resources"


def reads_the_kubelet_socket(obj: Obj) -> bool:
    return obj["kind"] == "DaemonSet" and any("hostPath" in v for v in obj["spec"]["template"]["spec"]["volumes"])


def chosen_host_network(obj: Obj, values: tuple[str, ...]) -> bool:
    """The one host namespace an admin may choose: the webhook's network, with webhook.hostNetwork (for control
    planes that cannot reach pod IPs). Nothing else ever shares one."""
    chosen = any((yaml.safe_load((CHART / "ci" / name).read_text()).get("webhook") or {}).get("hostNetwork")
                 for name in values)
    return chosen and (obj["kind"], obj["metadata"]["name"]) == ("Deployment", "gpuguard-webhook")


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_every_pod_runs_as_non_root_with_a_read_only_root_filesystem(values: tuple[str, ...]) -> None:
    """Also what the `restricted` Pod Security Standard asks, so the namespace can enforce it; the one exception
    is the agent while it reads the kubelet's PodResources socket (below)."""
    for obj, spec in render(values).workloads():
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if not reads_the_kubelet_socket(obj):
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") or chosen_host_network(obj, values), where
        assert not spec.get("hostPID"), where
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, f"{where}/{container['name']}"
            assert context["allowPrivilegeEscalation"] is False, f"{where}/{container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{where}/{container['name']}"
            assert not context.get("privileged"), f"{where}/{container['name']}"


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_the_only_host_path_is_the_kubelets_pod_resources_directory_mounted_read_only(values: tuple[str, ...]) -> None:
    for obj, spec in render(values).workloads():
        host_paths = {v["name"]: v["hostPath"] for v in spec.get("volumes", []) if "hostPath" in v}
        if not host_paths:
            continue
        assert obj["metadata"]["name"] == "gpuguard-agent"
        assert host_paths == {"pod-resources": {"path": POD_RESOURCES, "type": "Directory"}}
        [agent] = spec["containers"]
        [mount] = [m for m in agent["volumeMounts"] if m["name"] == "pod-resources"]
        assert mount == {"name": "pod-resources", "mountPath": POD_RESOURCES, "readOnly": True}
        assert f"--pod-resources-socket={POD_RESOURCES}/kubelet.sock" in agent["args"]
        # UID 0 only to connect to the root-owned socket: no capability, no escalation, nothing else of the host.
        assert spec["securityContext"]["runAsUser"] == 0
        assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert "add" not in agent["securityContext"]["capabilities"]


def test_without_pod_attribution_the_agent_is_non_root_and_mounts_nothing_of_the_host() -> None:
    [agent] = [spec for obj, spec in render(("agent-non-root-values.yaml",)).workloads()
               if obj["metadata"]["name"] == "gpuguard-agent"]
    assert agent["securityContext"]["runAsNonRoot"] is True and agent["securityContext"]["runAsUser"] == 65532
    assert not any("hostPath" in v for v in agent["volumes"])
    assert "--pod-resources-socket=" in agent["containers"][0]["args"]


def test_the_agents_own_security_context_still_wins() -> None:
    sets = ("agent.podSecurityContext.runAsUser=4242", "agent.podSecurityContext.runAsNonRoot=true")
    [agent] = [spec for obj, spec in render(sets=sets).workloads() if obj["metadata"]["name"] == "gpuguard-agent"]
    assert (agent["securityContext"]["runAsUser"], agent["securityContext"]["runAsNonRoot"]) == (4242, True)


def test_containers_that_write_temporary_files_get_a_writable_tmp(default_render: Rendered) -> None:
    for obj, spec in default_render.workloads():
        for container in spec["containers"]:
            if container["command"][0] == "gpuguard" or container["name"] == "kube-scheduler":
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                volume = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
                assert "emptyDir" in volume, f"{obj['metadata']['name']}/{container['name']}"


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_every_object_carries_the_standard_labels_and_selectors_use_only_immutable_ones(
    values: tuple[str, ...]
) -> None:
    for obj in render(values).objects:
        labels = obj["metadata"]["labels"]
        assert all(key in labels for key in STANDARD_LABELS), f"{obj['kind']} {obj['metadata']['name']}"
        selector = obj.get("spec", {}).get("selector", {})
        if obj["kind"] in ("Deployment", "DaemonSet"):
            assert set(selector["matchLabels"]) == {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                                                    "app.kubernetes.io/component"}


def rules_bound_to(rendered: Rendered, account: str) -> dict[tuple[str, str | None], list[Obj]]:
    """(role name, namespace) -> rules, for every chart-defined role bound to `account`."""
    found = {}
    for binding in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        if not any(s["name"] == account and s["namespace"] == NAMESPACE for s in binding["subjects"]):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        roles = [r for r in rendered.of_kind(ref["kind"]) if r["metadata"]["name"] == ref["name"]
                 and r["metadata"].get("namespace") == namespace]
        for role in roles:
            found[(ref["name"], namespace)] = role["rules"]
    return found


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_no_role_grants_wildcards(values: tuple[str, ...]) -> None:
    for role in render(values).of_kind("ClusterRole") + render(values).of_kind("Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]


def test_the_webhook_has_no_api_access_at_all(default_render: Rendered) -> None:
    account = default_render.get("ServiceAccount", "gpuguard-webhook")
    spec = default_render.get("Deployment", "gpuguard-webhook")["spec"]["template"]["spec"]
    assert account["automountServiceAccountToken"] is False and spec["automountServiceAccountToken"] is False
    assert rules_bound_to(default_render, "gpuguard-webhook") == {}


@pytest.mark.parametrize(("values", "namespace", "name"), [
    ((), "gpu-operator", "gpuguard-time-slicing"),
    (("custom-policy-values.yaml",), "nvidia-device-plugin", "device-plugin-configs"),
])
def test_the_agent_may_patch_nodes_and_touch_only_the_policys_device_plugin_configmap(
    values: tuple[str, ...], namespace: str, name: str
) -> None:
    rendered = render(values)
    assert rules_bound_to(rendered, "gpuguard-agent") == {
        ("gpuguard-agent", None): [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
        ("gpuguard-agent", namespace): [
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        ],
    }


def test_without_the_agent_there_is_no_node_or_configmap_access() -> None:
    rendered = render(("agent-off-values.yaml",))
    assert not [o for o in rendered.objects if o["metadata"]["name"] == "gpuguard-agent"]


def test_certificate_jobs_may_touch_one_secret_and_two_webhook_configurations(default_render: Rendered) -> None:
    for account in ("gpuguard-certs", "gpuguard-certs-hook"):
        assert rules_bound_to(default_render, account) == {
            (account, NAMESPACE): [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["gpuguard-webhook-tls"],
                 "verbs": ["get", "update"]},
            ],
            (account, None): [{"apiGroups": ["admissionregistration.k8s.io"],
                               "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
                               "resourceNames": ["gpuguard-webhook"], "verbs": ["get", "patch"]}],
        }


def test_the_test_pod_may_only_read_the_webhook_configurations_and_sees_no_private_key(
    default_render: Rendered
) -> None:
    assert rules_bound_to(default_render, "gpuguard-test") == {
        ("gpuguard-test", None): [{"apiGroups": ["admissionregistration.k8s.io"],
                                   "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
                                   "resourceNames": ["gpuguard-webhook"], "verbs": ["get"]}]}
    pod = default_render.get("Pod", "gpuguard-test")
    volume = next(v for v in pod["spec"]["volumes"] if "secret" in v)
    assert {item["key"] for item in volume["secret"]["items"]} == {"ca.crt", "tls.crt"}


def test_hook_rbac_disappears_once_the_hooks_succeeded(default_render: Rendered) -> None:
    hooked = [o for o in default_render.objects if o["metadata"]["name"] == "gpuguard-certs-hook"]
    assert {o["kind"] for o in hooked} == {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    for obj in hooked:
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert int(annotations["helm.sh/hook-weight"]) < 0, "RBAC must exist before the pre-install Job runs"


def test_the_agent_runs_on_gpu_nodes_with_the_nvidia_runtime_and_knows_its_node(default_render: Rendered) -> None:
    spec = default_render.get("DaemonSet", "gpuguard-agent")["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia"
    (agent,) = spec["containers"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--node-name=$(NODE_NAME)" in agent["args"] and "--backend=nvml" in agent["args"]
    assert "resources" in agent and "nvidia.com/gpu" not in agent["resources"].get("limits", {})


def test_an_empty_runtime_class_uses_the_nodes_default_runtime() -> None:
    spec = render(sets=("agent.runtimeClassName=",)).get("DaemonSet", "gpuguard-agent")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec


def test_the_image_runs_as_the_user_the_chart_expects_and_starts_gpuguard() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    context = load_values()["podSecurityContext"]
    assert f"USER {context['runAsUser']}:{context['runAsGroup']}" in dockerfile
    assert dockerfile[-1] == 'ENTRYPOINT ["gpuguard"]'


# Least privilege across every scenario (the tests above pin the exact rules for the default values).
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "deletecollection", "*"}
SENSITIVE_RESOURCES = {"roles", "clusterroles", "rolebindings", "clusterrolebindings", "serviceaccounts/token",
                       "pods/exec", "pods/attach", "nodes/proxy", "certificatesigningrequests/approval"}


WITHOUT_DRA = [v for v in ALL if v != ("dra-values.yaml",)]
"""On a DRA cluster the webhook's templates reconciler has exactly its own permissions (tests/chart/test_chart_dra.py)."""


@pytest.mark.parametrize("values", WITHOUT_DRA, ids=[i for i in IDS if i != "dra-values.yaml"])
def test_the_webhook_has_no_api_access_in_any_certificate_mode(values: tuple[str, ...]) -> None:
    """cert-manager's cainjector or the certs Jobs keep the caBundle; the webhook itself never calls the API."""
    rendered = render(values)
    spec = rendered.get("Deployment", "gpuguard-webhook")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert rules_bound_to(rendered, "gpuguard-webhook") == {}


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_a_pod_whose_account_is_bound_to_no_role_mounts_no_token(values: tuple[str, ...]) -> None:
    rendered = render(values)
    for obj, spec in rendered.workloads():
        account = spec.get("serviceAccountName", "default")
        if any(s["name"] == account for b in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding")
               for s in b["subjects"]):
            continue  # bound to a role, the chart's own or a built-in one (system:kube-scheduler)
        accounts = [a for a in rendered.of_kind("ServiceAccount") if a["metadata"]["name"] == account]
        mounted = spec.get("automountServiceAccountToken", accounts[0].get("automountServiceAccountToken", True)
                           if accounts else True)
        assert mounted is False, f"{obj['kind']} {obj['metadata']['name']} carries a token it has no use for"


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_no_role_reads_secrets_it_does_not_own_or_can_grant_itself_more(values: tuple[str, ...]) -> None:
    for role in render(values).of_kind("ClusterRole") + render(values).of_kind("Role"):
        where = f"{role['kind']} {role['metadata']['name']}"
        for rule in role["rules"]:
            verbs, resources = set(rule["verbs"]), set(rule["resources"])
            assert not verbs & FORBIDDEN_VERBS, where
            assert not resources & SENSITIVE_RESOURCES, where
            if "secrets" in resources:
                assert role["kind"] == "Role", f"{where}: Secrets only in its own namespace"
                assert verbs <= {"create", "get", "update"}, f"{where}: never list or watch Secrets"
                assert verbs == {"create"} or rule.get("resourceNames") == ["gpuguard-webhook-tls"], where


@pytest.mark.parametrize("values", [v for v in ALL if v != ("agent-off-values.yaml",)],
                         ids=[i for i in IDS if i != "agent-off-values.yaml"])
def test_the_agent_gets_and_patches_nodes_and_reaches_configmaps_in_one_namespace_only(
    values: tuple[str, ...]
) -> None:
    bound = rules_bound_to(render(values), "gpuguard-agent")
    cluster_wide = {name: rules for (name, namespace), rules in bound.items() if namespace is None}
    assert cluster_wide == {"gpuguard-agent": [{"apiGroups": [""], "resources": ["nodes"],
                                                "verbs": ["get", "patch"]}]}
    namespaced = [(namespace, rule) for (_, namespace), rules in bound.items() if namespace for rule in rules]
    assert len({namespace for namespace, _ in namespaced}) == 1
    for _, rule in namespaced:
        assert rule["resources"] == ["configmaps"]
        assert rule["verbs"] == ["create"] or (rule["verbs"] == ["get", "update"] and len(rule["resourceNames"]) == 1)


@pytest.mark.parametrize("values", ALL, ids=IDS)
def test_no_pod_shares_the_hosts_namespaces_ports_or_adds_capabilities(values: tuple[str, ...]) -> None:
    for obj, spec in render(values).workloads():
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert not spec.get("hostIPC") and not spec.get("hostPID"), where
        assert not spec.get("hostNetwork") or chosen_host_network(obj, values), where
        for container in containers(spec):
            assert not any("hostPort" in port for port in container.get("ports", [])), where
            assert not container["securityContext"]["capabilities"].get("add"), where

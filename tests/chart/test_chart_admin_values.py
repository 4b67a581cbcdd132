"""The values admins expect from a cluster chart: images by digest and through a mirror, extra arguments, environment
and volumes, the webhook on the host network, NetworkPolicies, topology spread, ServiceAccount annotations, and
placement for the hook Job and the test pod. ci/admin-values.yaml sets them all at once (and so goes through
`helm lint --strict` and strict schema validation with every other scenario)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.helm import Obj, Rendered, render, render_error

ADMIN = ("admin-values.yaml",)
DIGEST = "sha256:" + "ab12" * 16
GPUGUARD_CONTAINERS = {"webhook", "extender", "agent", "mig-layouts", "policy-check", "certs", "health", "certificates"}


def containers_of(rendered: Rendered) -> dict[tuple[str, str], Obj]:
    """(workload name, container name) -> container, for every workload."""
    return {(obj["metadata"]["name"], c["name"]): c for obj, spec in rendered.workloads() for c in spec["containers"]}


def images(rendered: Rendered) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for (_, name), container in containers_of(rendered).items():
        found.setdefault("gpuguard" if name in GPUGUARD_CONTAINERS else name, set()).add(container["image"])
    return found


def pod_spec_of(rendered: Rendered, kind: str, name: str) -> Obj:
    obj = rendered.get(kind, name)
    return dict(obj["spec"]["template"]["spec"])


def container(rendered: Rendered, workload: str, name: str) -> Obj:
    return containers_of(rendered)[(workload, name)]


# ------------------------------------------------------------------------------------------------------- images


def test_an_image_given_by_digest_renders_repository_at_digest() -> None:
    assert images(render(sets=(f"image.digest={DIGEST}",)))["gpuguard"] == {f"ghcr.io/gpuguard/gpuguard@{DIGEST}"}
    both = render(sets=(f"image.digest={DIGEST}", "image.tag=0.1.0"))
    assert images(both)["gpuguard"] == {f"ghcr.io/gpuguard/gpuguard:0.1.0@{DIGEST}"}


def test_without_digest_the_tag_defaults_to_the_charts_app_version() -> None:
    assert images(render())["gpuguard"] == {"ghcr.io/gpuguard/gpuguard:0.1.0"}


def test_the_global_registry_replaces_the_registry_of_every_image() -> None:
    found = images(render(sets=("global.imageRegistry=harbor.corp.example/proxy",)))
    assert found == {"gpuguard": {"harbor.corp.example/proxy/gpuguard/gpuguard:0.1.0"},
                     "kube-scheduler": {"harbor.corp.example/proxy/kube-scheduler:v1.29.0"}}


def test_a_kube_scheduler_digest_alone_pins_it_without_the_clusters_tag() -> None:
    found = images(render(sets=(f"scheduler.image.digest={DIGEST}",)))["kube-scheduler"]
    assert found == {f"registry.k8s.io/kube-scheduler@{DIGEST}"}


def test_admin_values_pin_both_images_through_the_mirror() -> None:
    found = images(render(ADMIN))
    assert found["gpuguard"] == {"mirror.corp.example:5000/gpuguard/gpuguard@sha256:"
                                 "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"}
    (scheduler,) = found["kube-scheduler"]
    assert scheduler.startswith("mirror.corp.example:5000/kube-scheduler:v1.29.4@sha256:")


@pytest.mark.parametrize(("setting", "message"), [
    (f"image.tag={DIGEST}", f'image.tag "{DIGEST}" is a digest, not a tag.\n  Give it as image.digest '
                            f"(image.digest={DIGEST})"),
    (f"image.tag=0.1.0@{DIGEST}", f"(image.digest={DIGEST}) and leave image.tag empty"),
    (f"scheduler.image.tag={DIGEST}", 'scheduler.image.tag "sha256:'),
    ("image.tag=-latest", 'image.tag "-latest" is not an image tag'),
    ("image.digest=sha256:abc", 'image.digest "sha256:abc" is not an image digest: it must be "sha256:" and 64'),
    ("image.digest=ab12ab12", 'image.digest "ab12ab12" is not an image digest'),
    ("image.repository=ghcr.io/gpuguard/gpuguard", 'image.repository "ghcr.io/gpuguard/gpuguard" starts with a '
                                                   "registry host"),
    ("image.repository=gpuguard/gpuguard:0.1.0", "carries a tag, digest or port"),
    ("image.repository=GpuGuard", 'image.repository "GpuGuard" is not a repository path'),
    ("global.imageRegistry=https://mirror.corp.example", 'global.imageRegistry "https://mirror.corp.example" is not '
                                                         "a registry"),
    ("image.registry=mirror.corp.example/", 'image.registry "mirror.corp.example/" is not a registry'),
])
def test_a_malformed_image_value_fails_the_render_with_the_fix(setting: str, message: str) -> None:
    assert message in render_error(setting)


# ---------------------------------------------------------------------------------- extra args, env and volumes


def test_extra_args_come_after_the_charts_own_so_they_override_them() -> None:
    rendered = render(ADMIN)
    extender = container(rendered, "gpuguard-scheduler", "extender")
    assert extender["args"][-1] == "--prometheus-interval=30"
    assert "--in-cluster" in extender["args"][:-1]
    assert container(rendered, "gpuguard-scheduler", "kube-scheduler")["args"][-1] == "--kube-api-qps=100"
    assert container(rendered, "gpuguard-agent", "agent")["args"][-1] == "--interval=30"


def test_extra_env_joins_the_charts_own_variables() -> None:
    rendered = render(ADMIN)
    agent_env = {e["name"]: e for e in container(rendered, "gpuguard-agent", "agent")["env"]}
    assert {"NODE_NAME", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "GPUGUARD_NODE_IP"} == set(agent_env)
    assert agent_env["GPUGUARD_NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert container(rendered, "gpuguard-webhook", "webhook")["env"] == [{"name": "GPUGUARD_LOG_LEVEL",
                                                                          "value": "DEBUG"}]
    assert "env" not in container(render(), "gpuguard-webhook", "webhook")


def test_extra_volumes_belong_to_the_pod_and_mounts_to_the_container_that_asks() -> None:
    rendered = render(ADMIN)
    scheduler = pod_spec_of(rendered, "Deployment", "gpuguard-scheduler")
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in scheduler["volumes"]
    extender = container(rendered, "gpuguard-scheduler", "extender")
    assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in extender["volumeMounts"]
    kube_scheduler = container(rendered, "gpuguard-scheduler", "kube-scheduler")
    assert "corp-ca" not in {m["name"] for m in kube_scheduler["volumeMounts"]}
    webhook = pod_spec_of(rendered, "Deployment", "gpuguard-webhook")
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "8Mi"}} in webhook["volumes"]
    assert {"name": "scratch", "mountPath": "/var/scratch"} in webhook["containers"][0]["volumeMounts"]


def volume(name: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {}}


@pytest.mark.parametrize(("values", "message"), [
    ({"webhook": {"extraVolumes": [volume("policy")]}},
     'webhook.extraVolumes: a volume named "policy" exists already (the chart\'s own are policy, tls, tmp)'),
    ({"scheduler": {"extraVolumes": [volume("a"), volume("a")]}}, 'scheduler.extraVolumes: a volume named "a"'),
    ({"webhook": {"extraVolumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}},
     'webhook.extraVolumeMounts: "/x" mounts volume "nowhere", which the pod does not have; add it to '
     "webhook.extraVolumes"),
    ({"scheduler": {"extraVolumes": [volume("v")], "extender": {"extraVolumeMounts": [
        {"name": "v", "mountPath": "/etc/gpuguard/"}]}}},
     'scheduler.extender.extraVolumeMounts: "/etc/gpuguard/" is mounted already'),
    ({"agent": {"extraVolumes": [volume("v")], "extraVolumeMounts": [
        {"name": "v", "mountPath": "/var/lib/kubelet/pod-resources"}]}}, "agent.extraVolumeMounts: "),
    ({"agent": {"extraEnv": [{"name": "NODE_NAME", "value": "x"}]}},
     'agent.extraEnv: "NODE_NAME" is set twice (the chart sets NODE_NAME, NVIDIA_VISIBLE_DEVICES, '
     "NVIDIA_DRIVER_CAPABILITIES itself)"),
    ({"webhook": {"extraEnv": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
     'webhook.extraEnv: "A" is set twice (the chart sets none itself)'),
])
def test_extras_that_collide_with_the_charts_own_fail_with_the_value_to_change(values: dict[str, Any],
                                                                              message: str) -> None:
    assert message in render_error(extra=yaml.safe_dump(values))


def test_the_pod_resources_mount_path_is_free_when_pod_resources_are_off() -> None:
    extra = ("agent.podResources.enabled=false", "agent.extraVolumes[0].name=v",
             "agent.extraVolumes[0].emptyDir.medium=Memory", "agent.extraVolumeMounts[0].name=v",
             "agent.extraVolumeMounts[0].mountPath=/var/lib/kubelet/pod-resources")
    spec = pod_spec_of(render(sets=extra), "DaemonSet", "gpuguard-agent")
    assert {"name": "v", "mountPath": "/var/lib/kubelet/pod-resources"} in spec["containers"][0]["volumeMounts"]


# ------------------------------------------------------------------------------------------- webhook hostNetwork


def test_the_webhook_on_the_host_network_serves_on_its_own_ports() -> None:
    rendered = render(ADMIN)
    spec = pod_spec_of(rendered, "Deployment", "gpuguard-webhook")
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    webhook = spec["containers"][0]
    assert {p["name"]: p["containerPort"] for p in webhook["ports"]} == {"https": 10443, "metrics": 10444}
    assert {"--port=10443", "--metrics-port=10444"} <= set(webhook["args"])
    service = rendered.get("Service", "gpuguard-webhook")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "https": (443, "https"), "metrics": (10444, "metrics")}
    # NetworkPolicy does not apply to host-network pods: none is rendered for the webhook.
    assert "gpuguard-webhook" not in rendered.names("NetworkPolicy")


def test_by_default_the_webhook_stays_in_the_pod_network() -> None:
    spec = pod_spec_of(render(), "Deployment", "gpuguard-webhook")
    assert "hostNetwork" not in spec and "dnsPolicy" not in spec


def test_the_default_ports_are_free_on_a_node() -> None:
    assert pod_spec_of(render(sets=("webhook.hostNetwork=true",)), "Deployment", "gpuguard-webhook")["hostNetwork"]


@pytest.mark.parametrize(("sets", "message"), [
    (("webhook.hostNetwork=true", "webhook.port=10250", "webhook.metricsPort=10444"),
     "webhook.port is 10250, the port of the kubelet on every node; with webhook.hostNetwork"),
    (("webhook.hostNetwork=true", "webhook.port=10443", "webhook.metricsPort=9100"),
     "webhook.metricsPort is 9100, the port of node-exporter"),
    (("webhook.port=9090",), "webhook.port and webhook.metricsPort are both 9090"),
])
def test_webhook_ports_that_cannot_be_bound_fail_the_render(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(*sets)


# ----------------------------------------------------------------------------------------------- NetworkPolicy


def ingress_ports(policy: Obj) -> list[tuple[set[int], list[Obj] | None]]:
    return [({p["port"] for p in rule["ports"]}, rule.get("from")) for rule in policy["spec"]["ingress"]]


def test_network_policies_are_off_by_default() -> None:
    assert render().of_kind("NetworkPolicy") == []


def test_network_policies_open_only_the_serving_ports() -> None:
    peers = "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring"
    rendered = render(sets=("networkPolicy.enabled=true", peers))
    monitoring = [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]
    test_pod = [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "test",
                                                 "app.kubernetes.io/instance": "gpuguard",
                                                 "app.kubernetes.io/name": "gpuguard"}}}]
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy")}
    assert set(policies) == {"gpuguard-webhook", "gpuguard-scheduler", "gpuguard-agent"}
    assert ingress_ports(policies["gpuguard-webhook"]) == [({8443}, None), ({9090}, monitoring),
                                                           ({8443, 9090}, test_pod)]
    # The extender's scheduling API (8888) is for kube-scheduler on loopback only: never opened.
    assert ingress_ports(policies["gpuguard-scheduler"]) == [({10259, 9091}, monitoring), ({10259, 9091}, test_pod)]
    assert ingress_ports(policies["gpuguard-agent"]) == [({9401}, monitoring), ({9401}, test_pod)]
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        workload = rendered.get("DaemonSet" if name.endswith("agent") else "Deployment", name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items(), name
    test_labels = rendered.get("Pod", "gpuguard-test")["metadata"]["labels"]
    assert test_pod[0]["podSelector"]["matchLabels"].items() <= test_labels.items()


def test_the_webhook_port_can_be_limited_to_the_control_planes_addresses() -> None:
    rendered = render(sets=("networkPolicy.enabled=true", "networkPolicy.webhookFrom[0].ipBlock.cidr=10.0.0.0/24",
                            "tests.enabled=false"))
    policy = rendered.get("NetworkPolicy", "gpuguard-webhook")
    assert ingress_ports(policy) == [({8443}, [{"ipBlock": {"cidr": "10.0.0.0/24"}}]), ({9090}, None)]


# ------------------------------------------------------------- topology spread, ServiceAccounts and placement


def test_topology_spread_constraints_select_the_components_own_pods_unless_told_otherwise() -> None:
    rendered = render(ADMIN)
    (webhook,) = pod_spec_of(rendered, "Deployment", "gpuguard-webhook")["topologySpreadConstraints"]
    assert webhook == {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "gpuguard",
                                                         "app.kubernetes.io/instance": "gpuguard",
                                                         "app.kubernetes.io/component": "webhook"}}}
    (scheduler,) = pod_spec_of(rendered, "Deployment", "gpuguard-scheduler")["topologySpreadConstraints"]
    assert scheduler["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "scheduler"
    own = render(sets=("webhook.topologySpreadConstraints[0].maxSkew=2",
                       "webhook.topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
                       "webhook.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
                       "webhook.topologySpreadConstraints[0].labelSelector.matchLabels.tier=admission"))
    (kept,) = pod_spec_of(own, "Deployment", "gpuguard-webhook")["topologySpreadConstraints"]
    assert kept["labelSelector"] == {"matchLabels": {"tier": "admission"}}
    assert "topologySpreadConstraints" not in pod_spec_of(render(), "Deployment", "gpuguard-webhook")


def test_service_account_annotations_reach_each_components_account() -> None:
    rendered = render(ADMIN)
    annotations = {name: rendered.get("ServiceAccount", name)["metadata"].get("annotations")
                   for name in ("gpuguard-webhook", "gpuguard-scheduler", "gpuguard-agent")}
    assert annotations == {
        "gpuguard-webhook": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/gpuguard-webhook"},
        "gpuguard-scheduler": {"iam.gke.io/gcp-service-account": "gpuguard-scheduler@example.iam.gserviceaccount.com"},
        "gpuguard-agent": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/gpuguard-agent"},
    }
    assert "annotations" not in render().get("ServiceAccount", "gpuguard-agent")["metadata"]


def test_the_hook_job_and_the_test_pod_go_where_they_are_told() -> None:
    """On a cluster whose every node is tainted, an install waits for the hook Job until its deadline and fails."""
    rendered = render(ADMIN)
    check = pod_spec_of(rendered, "Job", "gpuguard-policy-check")
    assert check["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert check["tolerations"] == [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                     "effect": "NoSchedule"}]
    test_pod = rendered.get("Pod", "gpuguard-test")["spec"]
    assert test_pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert test_pod["tolerations"] == [{"operator": "Exists"}]
    assert pod_spec_of(rendered, "Job", "gpuguard-certs-pre")["tolerations"] == [{"operator": "Exists"}]
    defaults = render()
    assert "nodeSelector" not in pod_spec_of(defaults, "Job", "gpuguard-policy-check")
    assert "tolerations" not in defaults.get("Pod", "gpuguard-test")["spec"]

"""The chart's `gpuguard mig-layouts` Deployment: off by default; when on, one replica running the command on the
policy, with exactly the RBAC it needs (no patch in a dry run). Schema validity is checked for every ci/ scenario,
this one's included, by test_chart_rendering."""

from __future__ import annotations

import yaml

from gpuguard.policy.loading import parse_policy
from tests.chart.helm import CHART, render, render_error

NAME = "gpuguard-mig-layouts"
SCENARIO = ("mig-layouts-values.yaml",)


def rules(values: tuple[str, ...] = SCENARIO, sets: tuple[str, ...] = ()) -> dict[str, list[str]]:
    role = render(values, sets).get("ClusterRole", NAME)
    return {resource: rule["verbs"] for rule in role["rules"] for resource in rule["resources"]}


def test_mig_layouts_is_not_installed_by_default() -> None:
    assert not [o for o in render().objects if NAME in o["metadata"]["name"]]


def test_when_enabled_one_replica_runs_the_command_on_the_mounted_policy() -> None:
    deployment = render(SCENARIO).get("Deployment", NAME)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[1:] == ["mig-layouts", "--policy=/etc/gpuguard/policy.yaml", "--in-cluster", "--metrics-port=9407"]
    assert pod["serviceAccountName"] == NAME
    assert container["ports"] == [{"name": "metrics", "containerPort": 9407, "protocol": "TCP"}]


def test_its_rbac_is_list_nodes_and_pods_and_patch_nodes_only() -> None:
    assert rules() == {"nodes": ["list", "patch"], "pods": ["list"]}
    binding = render(SCENARIO).get("ClusterRoleBinding", NAME)
    assert binding["subjects"][0]["name"] == NAME and binding["roleRef"]["name"] == NAME


def test_a_dry_run_gets_no_patch_permission_and_the_flag() -> None:
    assert rules(sets=("migLayouts.dryRun=true",)) == {"nodes": ["list"], "pods": ["list"]}
    args = render(SCENARIO, ("migLayouts.dryRun=true",)).get("Deployment", NAME)["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--dry-run" in args


def test_the_scenarios_policy_turns_a_pool_on() -> None:
    config = render(SCENARIO).get("ConfigMap", "gpuguard-policy")["data"]["policy.yaml"]
    section = parse_policy(config).dynamic_mig
    assert section.enabled and [p.name for p in section.pools] == ["serving"]
    assert (CHART / "ci" / SCENARIO[0]).exists()


ADMIN = {"migLayouts": {
    "extraArgs": ["--once"],
    "extraEnv": [{"name": "SSL_CERT_FILE", "value": "/etc/corp-ca/ca.crt"}],
    "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mig"}},
    "priorityClassName": "system-cluster-critical",
    "podLabels": {"team": "platform"},
    "podAnnotations": {"example.com/owner": "platform"},
}}


def test_the_admin_knobs_reach_its_pod_and_its_account() -> None:
    rendered = render(SCENARIO, extra=yaml.safe_dump(ADMIN))
    template = rendered.get("Deployment", NAME)["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["args"][-1] == "--once", "extra arguments come after the chart's own, so they win"
    assert container["env"] == ADMIN["migLayouts"]["extraEnv"]
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in container["volumeMounts"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert template["metadata"]["labels"]["team"] == "platform"
    assert template["metadata"]["annotations"] == {"example.com/owner": "platform"}
    account = rendered.get("ServiceAccount", NAME)
    assert account["metadata"]["annotations"] == ADMIN["migLayouts"]["serviceAccount"]["annotations"]


def test_an_extra_volume_named_like_the_charts_own_fails_with_the_value_to_change() -> None:
    extra = {"migLayouts": {"extraVolumes": [{"name": "policy", "emptyDir": {}}]}}
    assert 'migLayouts.extraVolumes: a volume named "policy" exists already' in render_error(
        values=SCENARIO, extra=yaml.safe_dump(extra))


def test_its_network_policy_opens_only_the_metrics_port() -> None:
    rendered = render(SCENARIO, ("networkPolicy.enabled=true",))
    policy = rendered.get("NetworkPolicy", NAME)
    assert [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["ingress"]] == [{9407}, {9407}]
    labels = rendered.get("Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    without = render(SCENARIO, ("networkPolicy.enabled=true", "migLayouts.metricsPort=0"))
    assert not [p for p in without.of_kind("NetworkPolicy") if p["metadata"]["name"] == NAME]

"""The chart's `gpuguard mig-layouts` Deployment: off by default; when on, one replica running the command on the
policy, with exactly the RBAC it needs (no patch in a dry run). Schema validity is checked for every ci/ scenario,
this one's included, by test_chart_rendering."""

from __future__ import annotations

from gpuguard.policy.loading import parse_policy
from tests.chart.helm import CHART, render

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

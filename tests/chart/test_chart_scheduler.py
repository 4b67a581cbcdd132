"""The secondary scheduler: a KubeSchedulerConfiguration kube-scheduler accepts, wired to the extender sidecar, with
every GPU and MIG resource name listed and exactly the RBAC of an upstream kube-scheduler."""

from __future__ import annotations

import pytest
import yaml

from gpuguard.contracts.scheduler_config import KubeSchedulerConfiguration, parse_scheduler_configuration
from gpuguard.policy import mig
from gpuguard.policy.loading import parse_policy
from gpuguard.policy.mig import all_mig_resource_names
from tests.chart.helm import CHART, KUBE_VERSIONS, NAMESPACE, SCENARIOS, Obj, Rendered, load_values, render

WITH_SCHEDULER = [(), *((s,) for s in SCENARIOS)]
IDS = ["defaults", *SCENARIOS]
SCHEDULER = "gpuguard-scheduler"


def configuration(rendered: Rendered) -> KubeSchedulerConfiguration:
    text = rendered.get("ConfigMap", SCHEDULER)["data"]["config.yaml"]
    return parse_scheduler_configuration(yaml.safe_load(text))


def containers(rendered: Rendered) -> dict[str, Obj]:
    spec = rendered.get("Deployment", SCHEDULER)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


@pytest.mark.parametrize("values", WITH_SCHEDULER, ids=IDS)
def test_the_rendered_configuration_passes_kube_schedulers_own_rules(values: tuple[str, ...]) -> None:
    config = configuration(render(values))
    (extender,) = config.extenders
    assert extender.filter_verb == "filter" and extender.prioritize_verb == "prioritize"
    assert extender.bind_verb == "", "no bind verb: kube-scheduler's default binder binds"
    assert extender.node_cache_capable and not extender.enable_https
    assert not any("*" in name for name in extender.managed_resource_names)


@pytest.mark.parametrize("values", WITH_SCHEDULER, ids=IDS)
def test_the_profile_is_the_scheduler_the_policy_sends_pods_to(values: tuple[str, ...]) -> None:
    rendered = render(values)
    policy = yaml.safe_load(rendered.get("ConfigMap", "gpuguard-policy")["data"]["policy.yaml"])
    assert configuration(rendered).scheduler_names == (policy["defaults"]["schedulerName"],)


def test_the_extender_is_called_on_the_loopback_port_it_listens_on(default_render: Rendered) -> None:
    (extender,) = configuration(default_render).extenders
    args = containers(default_render)["extender"]["args"]
    assert args[1] == "extender"
    assert extender.url_prefix == f"http://{flag(args, 'host')}:{flag(args, 'port')}" == "http://127.0.0.1:8888"
    assert "--in-cluster" in args and flag(args, "policy") == "/etc/gpuguard/policy.yaml"


def test_managed_resources_are_the_whole_gpu_and_every_mig_resource_of_the_catalog(default_render: Rendered) -> None:
    (extender,) = configuration(default_render).extenders
    names = extender.managed_resource_names
    assert names[: len(load_values()["scheduler"]["extender"]["managedResources"])] == ("nvidia.com/gpu",)
    missing = set(all_mig_resource_names()) - set(names)
    assert not missing, f"the chart's managedResources lack catalog MIG resources: {sorted(missing)}"
    assert sorted(names) == sorted({"nvidia.com/gpu", *all_mig_resource_names()})


def test_managed_resources_follow_the_catalog_file_the_chart_ships() -> None:
    shipped = CHART / "files" / "mig-catalog.yaml"
    assert shipped.read_text() == mig.catalog_text(), "the chart must read the package's own catalog file"


def test_mig_models_the_policy_adds_are_managed_too() -> None:
    rendered = render(("custom-policy-values.yaml",))
    policy = parse_policy(rendered.get("ConfigMap", "gpuguard-policy")["data"]["policy.yaml"])
    added = set(policy.catalog.resource_names) - set(all_mig_resource_names())
    assert added == {"nvidia.com/mig-1g.25gb", "nvidia.com/mig-7g.200gb"}
    assert added <= set(configuration(rendered).extenders[0].managed_resource_names)


def test_a_policy_that_renames_time_sliced_gpus_adds_the_shared_resource() -> None:
    (extender,) = configuration(render(("custom-policy-values.yaml",))).extenders
    assert extender.managed_resource_names[-1] == "nvidia.com/gpu.shared"
    assert "nvidia.com/gpu.shared" not in configuration(render()).extenders[0].managed_resource_names


@pytest.mark.parametrize(("values", "weight", "ignorable", "timeout"), [
    ((), 3, True, "3s"),
    (("extender-weight-values.yaml",), 10, False, "5s"),
])
def test_weight_ignorable_and_timeout_come_from_values(values: tuple[str, ...], weight: int, ignorable: bool,
                                                       timeout: str) -> None:
    (extender,) = configuration(render(values)).extenders
    assert (extender.weight, extender.ignorable, extender.http_timeout) == (weight, ignorable, timeout)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_kube_scheduler_defaults_to_the_clusters_own_version(kube_version: str) -> None:
    image = containers(render(kube_version=kube_version))["kube-scheduler"]["image"]
    assert image == f"registry.k8s.io/kube-scheduler:v{kube_version}"


def test_a_distro_suffix_is_dropped_and_an_explicit_tag_wins() -> None:
    assert containers(render(kube_version="v1.30.4-eks-a1b2c3"))["kube-scheduler"]["image"].endswith(":v1.30.4")
    pinned = render(sets=("scheduler.image.tag=v1.31.1",))
    assert containers(pinned)["kube-scheduler"]["image"] == "registry.k8s.io/kube-scheduler:v1.31.1"


def test_kube_scheduler_reads_the_rendered_configuration(default_render: Rendered) -> None:
    scheduler = containers(default_render)["kube-scheduler"]
    mount = next(m for m in scheduler["volumeMounts"] if m["name"] == "scheduler-config")
    assert flag(scheduler["args"], "config") == f"{mount['mountPath']}/config.yaml"


def test_leader_election_uses_the_lease_the_role_allows(default_render: Rendered) -> None:
    election = configuration(default_render).leader_election
    role = default_render.get("Role", f"{SCHEDULER}-leader-election")
    assert election.leader_elect and election.resource_lock == "leases"
    assert (election.resource_name, election.resource_namespace) == (SCHEDULER, NAMESPACE)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "resourceNames": [SCHEDULER], "verbs": ["get", "update"]}]


def bindings_of(rendered: Rendered, account: str) -> list[Obj]:
    return [b for kind in ("ClusterRoleBinding", "RoleBinding") for b in rendered.of_kind(kind)
            if any(s["name"] == account for s in b["subjects"])]


def test_scheduler_rbac_is_exactly_an_upstream_kube_schedulers(default_render: Rendered) -> None:
    bound = {(b["kind"], b["metadata"].get("namespace"), b["roleRef"]["kind"], b["roleRef"]["name"])
             for b in bindings_of(default_render, SCHEDULER)}
    assert bound == {
        ("ClusterRoleBinding", None, "ClusterRole", "system:kube-scheduler"),
        ("ClusterRoleBinding", None, "ClusterRole", "system:volume-scheduler"),
        ("RoleBinding", "kube-system", "Role", "extension-apiserver-authentication-reader"),
        ("RoleBinding", NAMESPACE, "Role", f"{SCHEDULER}-leader-election"),
    }
    assert not [r for r in default_render.of_kind("ClusterRole") if r["metadata"]["name"].startswith(SCHEDULER)]


def test_without_leader_election_there_is_no_lease_role() -> None:
    rendered = render(("extender-weight-values.yaml",))
    assert not configuration(rendered).leader_election.leader_elect
    assert f"{SCHEDULER}-leader-election" not in rendered.names("Role")


def checksum(rendered: Rendered) -> str:
    annotations = rendered.get("Deployment", SCHEDULER)["spec"]["template"]["metadata"]["annotations"]
    return str(annotations["checksum/scheduler-config"])


def test_a_changed_scheduler_configuration_restarts_kube_scheduler_but_a_policy_edit_does_not() -> None:
    base = checksum(render())
    assert checksum(render(sets=("scheduler.extender.weight=7",))) != base
    edited_policy = load_values()["policy"].replace("maxGpusPerPod: 4", "maxGpusPerPod: 2")
    assert checksum(render(extra=yaml.safe_dump({"policy": edited_policy}))) == base

"""The KubeSchedulerConfiguration model refuses what kube-scheduler refuses (its `validateExtenders`) and ignores the rest."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gpuguard.contracts.scheduler_config import (
    InvalidSchedulerConfiguration,
    extended_resource_name_problems,
    parse_scheduler_configuration,
)

Obj = dict[str, Any]

EXTENDER: Obj = {
    "urlPrefix": "http://127.0.0.1:8888",
    "filterVerb": "filter",
    "prioritizeVerb": "prioritize",
    "weight": 1,
    "nodeCacheCapable": True,
    "managedResources": [{"name": "nvidia.com/gpu"}, {"name": "nvidia.com/mig-1g.10gb", "ignoredByScheduler": False}],
    "httpTimeout": "5s",
}
CONFIG: Obj = {
    "apiVersion": "kubescheduler.config.k8s.io/v1",
    "kind": "KubeSchedulerConfiguration",
    "profiles": [{"schedulerName": "gpuguard-scheduler"}],
    "extenders": [EXTENDER],
}


def config_with(**changes: object) -> Obj:
    config = copy.deepcopy(CONFIG)
    config.update(copy.deepcopy(changes))
    return config


def extender_with(**changes: object) -> Obj:
    return {**copy.deepcopy(EXTENDER), **changes}


def test_a_valid_configuration_is_accepted_with_wire_names() -> None:
    config = parse_scheduler_configuration(CONFIG)
    (extender,) = config.extenders
    assert config.scheduler_names == ("gpuguard-scheduler",)
    assert extender.managed_resource_names == ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb")
    assert extender.weight == 1 and extender.node_cache_capable


def test_fields_the_model_does_not_know_are_tolerated() -> None:
    config = config_with(
        clientConnection={"kubeconfig": "", "qps": 50},
        percentageOfNodesToScore=100,
        profiles=[{"schedulerName": "a", "plugins": {"score": {"disabled": [{"name": "ImageLocality"}]}},
                   "pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": {"type": "MostAllocated"}}}]}],
        extenders=[extender_with(tlsConfig={"insecure": True, "certData": "eA=="}, enableHTTPS=True)],
    )
    parsed = parse_scheduler_configuration(config)
    assert parsed.extenders[0].enable_https and parsed.extenders[0].tls_config is not None


@pytest.mark.parametrize(("config", "message"), [
    (config_with(extenders=[extender_with(weight=0)]), "must have a positive weight applied to it"),
    (config_with(extenders=[extender_with(weight=-2)]), "must have a positive weight applied to it"),
    (config_with(extenders=[extender_with(managedResources=[{"name": "nvidia.com/mig-*"}])]), "wildcards"),
    (config_with(extenders=[extender_with(managedResources=[{"name": "nvidia.com/gpu"}, {"name": "nvidia.com/gpu"}])]),
     "duplicate extender managed resource name 'nvidia.com/gpu'"),
    (config_with(extenders=[extender_with(), extender_with(urlPrefix="http://b", managedResources=[{"name": "nvidia.com/gpu"}])]),
     "extenders[1].managedResources: duplicate"),
    (config_with(extenders=[extender_with(bindVerb="bind"), extender_with(urlPrefix="http://b", bindVerb="bind",
                                                                          managedResources=[])]),
     "only one extender can implement bind"),
    (config_with(extenders=[extender_with(managedResources=[{"name": "kubernetes.io/gpu"}])]),
     "not an extended resource name"),
    (config_with(extenders=[extender_with(managedResources=[{"name": "gpu"}])]), "not an extended resource name"),
    (config_with(extenders=[extender_with(httpTimeout="5")]), "not a Go duration"),
    (config_with(extenders=[extender_with(urlPrefix="")]), "extenders[0].urlPrefix"),
    (config_with(profiles=[{"schedulerName": "a"}, {"schedulerName": "a"}]), "schedulerName 'a' is used twice"),
    (config_with(apiVersion="kubescheduler.config.k8s.io/v1beta3"), "apiVersion"),
])
def test_what_kube_scheduler_refuses_is_refused_with_the_field_named(config: Obj, message: str) -> None:
    with pytest.raises(InvalidSchedulerConfiguration) as error:
        parse_scheduler_configuration(config)
    assert message in str(error.value)


def test_a_filter_only_extender_needs_no_weight() -> None:
    extender = {k: v for k, v in EXTENDER.items() if k not in ("prioritizeVerb", "weight")}
    assert parse_scheduler_configuration(config_with(extenders=[extender])).extenders[0].weight == 0


@pytest.mark.parametrize(("name", "valid"), [
    ("nvidia.com/gpu", True),
    ("nvidia.com/gpu.shared", True),
    ("nvidia.com/mig-1g.10gb.me", True),
    ("nvidia.com/mig-7g.141gb", True),
    ("nvidia.com/mig-*", False),
    ("NVIDIA.com/gpu", False),
    ("nvidia.com/-gpu", False),
    ("requests.nvidia.com/gpu", False),
    ("nvidia.com/" + "g" * 64, False),
])
def test_extended_resource_names_follow_kubernetes_qualified_name_rules(name: str, valid: bool) -> None:
    assert (extended_resource_name_problems(name) == []) is valid

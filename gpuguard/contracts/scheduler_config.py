"""The parts of kube-scheduler's `KubeSchedulerConfiguration` (`kubescheduler.config.k8s.io/v1`) that gpuguard renders.

The Helm chart runs a secondary kube-scheduler whose configuration names one profile (`gpuguard-scheduler`) and one
extender entry pointing at the extender sidecar. kube-scheduler refuses to start on a configuration its own
validation rejects, and a scheduler that does not start leaves every GPU pod Pending; this model applies the same
rules (kube-scheduler's `validateExtenders`, pkg/scheduler/apis/config/validation) so the chart's tests catch them first:

- an extender with a `prioritizeVerb` must have `weight > 0` ("must have a positive weight applied to it");
- at most one extender may set `bindVerb` ("only one extender can implement bind");
- every `managedResources[].name` is a valid extended resource name (so no wildcards such as `nvidia.com/mig-*`),
  and no name appears twice across all extenders;
- profile scheduler names are non-empty and unique; `httpTimeout` is a Go duration string.

It is a model of a Kubernetes object we do not own, so it tolerates fields it does not model (plugins,
pluginConfig, clientConnection, ...). Data only: no I/O.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from gpuguard.policy.loading import format_path

API_VERSION = "kubescheduler.config.k8s.io/v1"

MAX_EXTENDER_PRIORITY = 10
"""Extender scores are 0..10; kube-scheduler scales them by `weight * 100 / 10` and adds them to plugin scores."""

_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
_QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REQUESTS_PREFIX = "requests."
"""kube-scheduler also checks `requests.<name>`, the name ResourceQuota would use for the resource."""


class InvalidSchedulerConfiguration(ValueError):
    """The configuration would make kube-scheduler refuse to start."""


class SchedulerConfigModel(BaseModel):
    """Kubernetes' JSON names (camelCase); unknown fields are ignored, not refused: this is not our format."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)


def extended_resource_name_problems(name: str) -> list[str]:
    """Why `name` is not an extended resource name (empty when it is), as kube-scheduler's validation sees it."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith(_REQUESTS_PREFIX):
        return [f"{name!r} is not an extended resource name: it needs a domain prefix other than kubernetes.io, "
                "e.g. nvidia.com/gpu"]
    return [f"{name!r}: {problem}" for problem in _qualified_name_problems(_REQUESTS_PREFIX + name)]


def _qualified_name_problems(name: str) -> list[str]:
    prefix, _, local = name.rpartition("/")
    problems = []
    if len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix):
        problems.append(f"prefix {prefix!r} must be a lower-case DNS subdomain")
    if len(local) > 63 or not _QUALIFIED_NAME_PART.match(local):
        problems.append(
            f"name part {local!r} must be at most 63 characters of letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit (wildcards such as '*' are not accepted: list every name)"
        )
    return problems


class ManagedResource(SchedulerConfigModel):
    name: str
    ignored_by_scheduler: bool = False
    """true: the in-tree NodeResourcesFit plugin skips this resource (for resources nodes never advertise)."""

    @field_validator("name")
    @classmethod
    def _extended_resource_name(cls, name: str) -> str:
        problems = extended_resource_name_problems(name)
        if problems:
            raise ValueError("; ".join(problems))
        return name


class ExtenderTLSConfig(SchedulerConfigModel):
    insecure: bool = False
    server_name: str = ""
    ca_file: str = ""


class Extender(SchedulerConfigModel):
    url_prefix: str = Field(min_length=1)
    filter_verb: str = ""
    preempt_verb: str = ""
    prioritize_verb: str = ""
    bind_verb: str = ""
    weight: int = 0
    """Multiplies the extender's 0..10 scores; must be positive when `prioritizeVerb` is set."""
    enable_https: bool = Field(default=False, alias="enableHTTPS")
    tls_config: ExtenderTLSConfig | None = None
    http_timeout: str = "5s"
    """Go duration. A filter call that times out fails the scheduling attempt unless `ignorable`."""
    node_cache_capable: bool = False
    """true: the scheduler sends node names only, and the extender keeps its own node and pod cache."""
    managed_resources: tuple[ManagedResource, ...] = ()
    """The extender is consulted only for pods asking for one of these; empty means every pod."""
    ignorable: bool = False

    @field_validator("http_timeout")
    @classmethod
    def _go_duration(cls, value: str) -> str:
        if not _GO_DURATION.match(value):
            raise ValueError(f"{value!r} is not a Go duration; write it like 5s, 500ms or 1m30s")
        return value

    @model_validator(mode="after")
    def _weighted_when_prioritizing(self) -> Extender:
        if self.prioritize_verb and self.weight <= 0:
            raise ValueError(
                f"weight is {self.weight}: an extender with prioritizeVerb must have a positive weight applied to it"
            )
        return self

    @property
    def managed_resource_names(self) -> tuple[str, ...]:
        return tuple(resource.name for resource in self.managed_resources)


class Profile(SchedulerConfigModel):
    scheduler_name: str = Field(default="default-scheduler", min_length=1)


class LeaderElection(SchedulerConfigModel):
    leader_elect: bool = True
    resource_lock: str = "leases"
    resource_name: str = "kube-scheduler"
    resource_namespace: str = "kube-system"


class KubeSchedulerConfiguration(SchedulerConfigModel):
    api_version: Literal["kubescheduler.config.k8s.io/v1"]
    kind: Literal["KubeSchedulerConfiguration"]
    leader_election: LeaderElection = LeaderElection()
    profiles: tuple[Profile, ...] = (Profile(),)
    extenders: tuple[Extender, ...] = ()

    @model_validator(mode="after")
    def _upstream_rules(self) -> KubeSchedulerConfiguration:
        problems = [*_profile_problems(self.profiles), *_extender_problems(self.extenders)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return tuple(profile.scheduler_name for profile in self.profiles)


def _profile_problems(profiles: tuple[Profile, ...]) -> list[str]:
    names = [profile.scheduler_name for profile in profiles]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    return [f"profiles: schedulerName {name!r} is used twice; each profile needs its own" for name in duplicates]


def _extender_problems(extenders: tuple[Extender, ...]) -> list[str]:
    problems = []
    binders = sum(1 for extender in extenders if extender.bind_verb)
    if binders > 1:
        problems.append(f"extenders: found {binders} extenders implementing bind; only one extender can implement bind")
    seen: set[str] = set()
    for index, extender in enumerate(extenders):
        for name in extender.managed_resource_names:
            if name in seen:
                problems.append(f"extenders[{index}].managedResources: duplicate extender managed resource name {name!r}")
            seen.add(name)
    return problems


def parse_scheduler_configuration(document: object) -> KubeSchedulerConfiguration:
    """Validate a decoded YAML/JSON document; raise `InvalidSchedulerConfiguration` naming each wrong field."""
    try:
        return KubeSchedulerConfiguration.model_validate(document)
    except ValidationError as error:
        details = error.errors(include_url=False)
        issues = "; ".join(f"{format_path(d['loc']) or 'configuration'}: {_message(d['msg'])}" for d in details)
        raise InvalidSchedulerConfiguration(f"invalid KubeSchedulerConfiguration: {issues}") from None


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")

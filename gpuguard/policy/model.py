"""The GPU policy, version 1 (`apiVersion: gpuguard.io/v1`, `kind: GpuPolicy`), as pydantic models.

This is our own configuration format, so unknown fields are errors (a misspelt key must not be silently ignored)
and the version is checked. Field names follow the YAML (camelCase aliases); every field documents its unit and why
its default. Cross-field rules that need the MIG catalog live in `gpuguard.policy.loading`, where each error can be
reported with its exact field path. Pure: no I/O.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.catalog_schema import CatalogSpec
from gpuguard.policy.migconfig import ConfigEntry, merged
from gpuguard.policy.runtime import Runtime

Mode = Literal["enforce", "warn", "audit"]
"""enforce: deny violations; warn: admit with warnings; audit: admit, only log and count."""

UserOverride = Literal["gpu-count", "mig-profile", "gpu-product", "sharing", "skip"]
FitStrategy = Literal["binpack", "spread"]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """A Go-style duration (`120s`, `2m`, `1m30s`, `500ms`) or a plain number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 120s or 2m")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not text or _DURATION_PART.sub("", text):
        raise ValueError(f"{text!r} is not a duration; write it like 120s, 2m or 1m30s")
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class PolicyModel(BaseModel):
    """Base of every policy section: camelCase keys, unknown keys rejected, immutable once loaded."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


class GpuSpec(PolicyModel):
    """What a model container gets: whole GPUs, one MIG slice, or a time-sliced share. Exactly one is set."""

    count: int | None = Field(default=None, ge=0, le=64)
    """Whole GPUs (`nvidia.com/gpu: N`). 0 means no GPU: nothing GPU-related is injected."""
    mig_profile: str | None = None
    """One MIG device of this profile (`nvidia.com/mig-<profile>: 1`), e.g. `1g.10gb`."""
    sharing: Literal["timeSlicing"] | None = None
    """One time-sliced replica of a GPU, on nodes the agent configured for time-slicing."""

    @model_validator(mode="after")
    def _exactly_one(self) -> GpuSpec:
        chosen = [name for name in ("count", "mig_profile", "sharing") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("set exactly one of count, migProfile or sharing (e.g. {count: 1} or {migProfile: 1g.10gb})")
        return self


class Toleration(PolicyModel):
    """A pod toleration, in the Kubernetes field names."""

    key: str = ""
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not set value; drop value or use operator Equal")
        return self

    def to_k8s(self) -> dict[str, object]:
        """The toleration as a pod spec entry, leaving out empty optional fields."""
        entry: dict[str, object] = {"key": self.key, "operator": self.operator}
        if self.value:
            entry["value"] = self.value
        if self.effect:
            entry["effect"] = self.effect
        if self.toleration_seconds is not None:
            entry["tolerationSeconds"] = self.toleration_seconds
        return entry


class TritonMetrics(PolicyModel):
    """Prometheus scrape annotations for Triton model servers."""

    enabled: bool = True
    port: int = Field(default=8002, ge=1, le=65535)
    """Triton's metrics port when the container does not pass --metrics-port (Triton's own default is 8002)."""
    path: str = Field(default="/metrics", pattern=r"^/")


class PodDefaults(PolicyModel):
    """What every in-scope predictor pod gets unless a rule says otherwise."""

    gpu: GpuSpec = GpuSpec(count=1)
    tolerations: tuple[Toleration, ...] = ()
    node_selector: dict[str, str] = Field(default_factory=dict)
    scheduler_name: str = ""
    """`""` leaves spec.schedulerName untouched."""
    triton_metrics: TritonMetrics = TritonMetrics()


class RuleMatch(PolicyModel):
    """All given conditions must hold; an empty list or map matches anything."""

    namespaces: tuple[str, ...] = ()
    """Namespace names or shell-style globs (`llm-*`)."""
    runtimes: tuple[Runtime, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    """Pod labels that must all be present with these values."""


class Rule(PolicyModel):
    """A named override of the defaults; the first matching rule wins and replaces each defaults key it sets."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63)
    match: RuleMatch = RuleMatch()
    gpu: GpuSpec | None = None
    tolerations: tuple[Toleration, ...] | None = None
    node_selector: dict[str, str] | None = None
    scheduler_name: str | None = None
    triton_metrics: TritonMetrics | None = None


class Limits(PolicyModel):
    """What validation refuses (or warns about, per mode)."""

    max_gpus_per_pod: int = Field(default=8, ge=1)
    """Whole GPUs one pod may ask for; 8 is one full node of the common 8-GPU servers."""
    allowed_mig_profiles: tuple[str, ...] = ()
    """Empty: any profile the catalog knows."""
    allow_time_slicing: bool = True
    deny_privileged_gpu_pods: bool = True
    """A privileged container sees every GPU on the node whatever it requested."""


class LimitsOverride(PolicyModel):
    """Per-namespace replacement of individual limits; unset keys keep the global value."""

    max_gpus_per_pod: int | None = Field(default=None, ge=1)
    allowed_mig_profiles: tuple[str, ...] | None = None
    allow_time_slicing: bool | None = None
    deny_privileged_gpu_pods: bool | None = None


class NamespaceOverride(PolicyModel):
    mode: Mode | None = None
    limits: LimitsOverride | None = None


class Weights(PolicyModel):
    mig_fit: float = Field(default=1.0, ge=0)
    """Weight of how well the request packs onto the node's free GPUs or MIG slots."""
    utilization: float = Field(default=1.0, ge=0)
    """Weight of how idle the node's candidate GPUs are."""


class Scheduling(PolicyModel):
    weights: Weights = Weights()
    max_gpu_utilization: float = Field(default=95, ge=0, le=100)
    """Percent; a node whose every candidate GPU is at or above this fails the filter."""
    metrics_max_age: Seconds = 120.0
    """Seconds (written 120s, 2m); older utilization is ignored (neutral), never trusted. dcgm-exporter samples
    every 30 s and Prometheus scrapes every 15-30 s, so 120 s tolerates a missed scrape or two."""
    fit: FitStrategy = "binpack"
    """binpack keeps whole nodes free for big requests; spread balances load across nodes."""


class ConfigMapRef(PolicyModel):
    namespace: str = "gpu-operator"
    name: str = "gpuguard-time-slicing"


class NodeLabelMatch(PolicyModel):
    node_labels: dict[str, str] = Field(default_factory=dict)


class TimeSlicingNodes(PolicyModel):
    """Nodes whose labels all match get `replicas` time-sliced shares of each GPU."""

    match: NodeLabelMatch
    replicas: int

    @field_validator("replicas")
    @classmethod
    def _at_least_two(cls, replicas: int) -> int:
        if replicas < 2:
            raise ValueError(
                f"replicas is {replicas}, must be at least 2: the NVIDIA device plugin rejects fewer "
                "(remove the entry to stop time-slicing these nodes)"
            )
        return replicas


class TimeSlicing(PolicyModel):
    config_map: ConfigMapRef = ConfigMapRef()
    """The NVIDIA device plugin's config ConfigMap the agent writes named entries into."""
    rename_by_default: bool = False
    """true: shares are advertised as `nvidia.com/gpu.shared` instead of `nvidia.com/gpu`."""
    fail_requests_greater_than_one: bool = False
    nodes: tuple[TimeSlicingNodes, ...] = ()


class ExternallyManaged(PolicyModel):
    """Pods whose GPUs something else hands out: DRA claims, KAI-Scheduler, HAMi, or a scheduler listed here."""

    schedulers: tuple[str, ...] = ("kai-scheduler", "hami-scheduler")
    """`spec.schedulerName` values of GPU schedulers that place their own pods (KAI-Scheduler's and HAMi's defaults)."""
    mutation: Literal["none", "placement"] = "none"
    """none: leave the pod as it is (only `gpuguard.io/applied` says why); placement: also add the tolerations, node
    selector and Triton annotations, never a GPU or the scheduler."""
    validation: Literal["all", "deviceAccess"] = "all"
    """all: judge them like every pod (a scheduler name must not lift the limits); deviceAccess: judge only
    privileged containers and GPUs reached without a request, leaving counts to the other scheduler."""


class MigPool(PolicyModel):
    """One node pool whose MIG layouts follow demand: the nodes labelled `<dynamicMig.poolLabel>=<name>`."""

    name: str = Field(pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", max_length=63)
    layouts: tuple[str, ...] = Field(min_length=1)
    """`nvidia.com/mig.config` names this pool's nodes may be moved to (the MIG manager's config: the GPU Operator's
    default names such as all-1g.10gb, all-3g.40gb, all-balanced, or `migConfigs` below)."""
    minimum: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """Per layout name: nodes of the pool that always stay in it."""
    cooldown: Seconds = 600.0
    """Seconds (written 10m) after a node's layout change before it may change again; a change drains the node's
    GPU operands, so flapping costs minutes of capacity each time."""


class DynamicMig(PolicyModel):
    """Demand-driven MIG layouts, applied through NVIDIA's MIG manager (`gpuguard mig-layouts`). Off by default."""

    enabled: bool = False
    pool_label: str = "gpuguard.io/mig-pool"
    """The node label naming a node's pool; nodes without it are never changed."""
    interval: Seconds = 30.0
    """Seconds between planning rounds."""
    pools: tuple[MigPool, ...] = ()
    mig_configs: dict[str, tuple[ConfigEntry, ...]] = Field(default_factory=dict)
    """Layouts of the MIG manager's configuration besides the GPU Operator's default ones (the same names and
    entries as its ConfigMap, keys in camelCase: deviceFilter, devices, migDevices), so the planner knows what each
    one makes of a GPU."""

    @model_validator(mode="after")
    def _known_layouts(self) -> DynamicMig:
        known = merged(self.mig_configs)
        for i, pool in enumerate(self.pools):
            for name in (*pool.layouts, *pool.minimum):
                if name not in known:
                    close = difflib.get_close_matches(name, list(known), n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise ValueError(f"pools[{i}] ({pool.name}): layout {name!r} is not in the MIG manager's "
                                     f"default config nor in dynamicMig.migConfigs{hint}; add it to migConfigs "
                                     "with the entries your MIG manager's ConfigMap gives it")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        return self


class Policy(PolicyModel):
    api_version: Literal["gpuguard.io/v1"]
    kind: Literal["GpuPolicy"]
    mode: Mode = "enforce"
    namespaces: dict[str, NamespaceOverride] = Field(default_factory=dict)
    """Per-namespace overrides; an exact name wins over globs, then globs are tried in file order."""
    defaults: PodDefaults = PodDefaults()
    rules: tuple[Rule, ...] = ()
    limits: Limits = Limits()
    user_overrides: tuple[UserOverride, ...] = ()
    """Which gpuguard.io/* annotations users may set; none unless the admin lists them."""
    scheduling: Scheduling = Scheduling()
    time_slicing: TimeSlicing = TimeSlicing()
    gpu_resource_types: tuple[str, ...] = ()
    """Extended resources that are GPUs on this cluster besides the built-in NVIDIA, AMD, Intel and Gaudi names (like
    KServe's `customGPUResourceTypeList`); counted and judged as GPUs, one device each."""
    externally_managed: ExternallyManaged = ExternallyManaged()
    dynamic_mig: DynamicMig = DynamicMig()
    mig_catalog: CatalogSpec | None = None
    """GPU models to add to gpuguard's MIG catalog, or to replace (same name), in the schema of its catalog file:
    for GPUs newer than this release. Their profiles become known to validation and their geometry to the extender."""

    @property
    def catalog(self) -> MigCatalog:
        """The MIG catalog this policy sees: the shipped one with `migCatalog`'s entries."""
        return mig.catalog_for(self.mig_catalog)

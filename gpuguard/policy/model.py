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
from gpuguard.policy.workload import LlmRole, NodeRole, WorkloadKind

Mode = Literal["enforce", "warn", "audit"]
"""enforce: deny violations; warn: admit with warnings; audit: admit, only log and count."""

UserOverride = Literal["gpu-count", "mig-profile", "gpu-product", "sharing", "skip"]
Allocation = Literal["devicePlugin", "dra"]
"""devicePlugin: GPUs as extended resources (`nvidia.com/gpu`, `nvidia.com/mig-*`); dra: as ResourceClaims on the
NVIDIA DRA driver's DeviceClasses (Kubernetes 1.34+, `resource.k8s.io/v1`)."""
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
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
    """The taint key to tolerate; "" with operator Exists tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists: any value of the key; Equal: only `value`."""
    value: str = ""
    """The taint value, with operator Equal; must be empty with Exists."""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    """The taint effect to tolerate; "" means every effect."""
    toleration_seconds: int | None = None
    """With effect NoExecute: how long the pod stays on a node after the taint appears; unset means forever."""

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
    """false: Triton pods get no scrape annotations."""
    port: int = Field(default=8002, ge=1, le=65535)
    """Triton's metrics port when the container does not pass --metrics-port (Triton's own default is 8002)."""
    path: str = Field(default="/metrics", pattern=r"^/")
    """The HTTP path Prometheus scrapes."""


class PodDefaults(PolicyModel):
    """What every in-scope predictor pod gets unless a rule says otherwise."""

    gpu: GpuSpec = GpuSpec(count=1)
    """The GPU the model container gets when it asks for none itself."""
    tolerations: tuple[Toleration, ...] = ()
    """Added to the pod where not already present (never duplicated)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Entries added to spec.nodeSelector where the pod does not set that key."""
    scheduler_name: str = ""
    """`""` leaves spec.schedulerName untouched."""
    triton_metrics: TritonMetrics = TritonMetrics()
    """Prometheus annotations for pods whose model container runs Triton."""
    allocation: Allocation = "devicePlugin"
    """How the GPU is given: extended resources (the default, as before DRA) or a ResourceClaim (`dra`)."""


class RuleMatch(PolicyModel):
    """All given conditions must hold; an empty list or map matches anything."""

    namespaces: tuple[str, ...] = ()
    """Namespace names or shell-style globs (`llm-*`)."""
    runtimes: tuple[Runtime, ...] = ()
    """Model servers, as recognised from the model container's image, command and args."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Pod labels that must all be present with these values."""
    kinds: tuple[WorkloadKind, ...] = ()
    """The KServe kind that made the pod: InferenceService (predictor pods) or LLMInferenceService (workload pods)."""
    roles: tuple[LlmRole, ...] = ()
    """llm-d roles of LLMInferenceService pods (`llm-d.ai/role`): prefill, decode, or both (no separate prefill).
    InferenceService pods have no role, so a rule listing roles never matches them."""
    node_roles: tuple[NodeRole, ...] = ()
    """Place in a multi-node group: single (one pod serves the model), leader (a LeaderWorkerSet leader, or a
    multi-node InferenceService's head) or worker."""


class Rule(PolicyModel):
    """A named override of the defaults; the first matching rule wins and replaces each defaults key it sets."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63, examples=["llm"])
    """Unique; recorded on admitted pods as `gpuguard.io/applied` and in the webhook's metrics."""
    match: RuleMatch = RuleMatch()
    """Which objects the rule applies to; an empty match applies to all."""
    gpu: GpuSpec | None = None
    """Replaces `defaults.gpu`."""
    tolerations: tuple[Toleration, ...] | None = None
    """Replaces `defaults.tolerations` (the whole list)."""
    node_selector: dict[str, str] | None = None
    """Replaces `defaults.nodeSelector` (the whole map)."""
    scheduler_name: str | None = None
    """Replaces `defaults.schedulerName`."""
    triton_metrics: TritonMetrics | None = None
    """Replaces `defaults.tritonMetrics`."""
    allocation: Allocation | None = None
    """Replaces `defaults.allocation` (and the namespace's) for the pods this rule matches."""


class Limits(PolicyModel):
    """What validation refuses (or warns about, per mode)."""

    max_gpus_per_pod: int = Field(default=8, ge=1)
    """Whole GPUs one pod may ask for; 8 is one full node of the common 8-GPU servers."""
    allowed_mig_profiles: tuple[str, ...] = ()
    """Empty: any profile the catalog knows."""
    allow_time_slicing: bool = True
    """false: time-sliced GPUs (`sharing`, `nvidia.com/gpu.shared`) are refused."""
    deny_privileged_gpu_pods: bool = True
    """A privileged container sees every GPU on the node whatever it requested."""


class LimitsOverride(PolicyModel):
    """Per-namespace replacement of individual limits; unset keys keep the global value."""

    max_gpus_per_pod: int | None = Field(default=None, ge=1)
    """Replaces `limits.maxGpusPerPod` in this namespace."""
    allowed_mig_profiles: tuple[str, ...] | None = None
    """Replaces `limits.allowedMigProfiles` in this namespace."""
    allow_time_slicing: bool | None = None
    """Replaces `limits.allowTimeSlicing` in this namespace."""
    deny_privileged_gpu_pods: bool | None = None
    """Replaces `limits.denyPrivilegedGpuPods` in this namespace."""


class NamespaceOverride(PolicyModel):
    """The mode and limits of the namespaces a `namespaces` key names (an exact name, or a glob such as `sandbox-*`)."""

    mode: Mode | None = None
    """Replaces the top-level `mode` in these namespaces."""
    limits: LimitsOverride | None = None
    """Individual limits replaced in these namespaces."""
    allocation: Allocation | None = None
    """The namespace's pods get GPUs this way unless their rule says otherwise (a namespace on a DRA node pool)."""


class DeviceClasses(PolicyModel):
    """The DeviceClasses claims ask; the NVIDIA DRA driver installs these two (names an admin may have changed)."""

    gpu: str = Field(default="gpu.nvidia.com", pattern=DNS_SUBDOMAIN, max_length=253)
    """Whole GPUs."""
    mig: str = Field(default="mig.nvidia.com", pattern=DNS_SUBDOMAIN, max_length=253)
    """MIG devices; the claim pins the profile with a CEL selector."""


class Dra(PolicyModel):
    """How `allocation: dra` shapes become ResourceClaims."""

    device_classes: DeviceClasses = DeviceClasses()
    """The DeviceClasses requests name: `gpu` for whole GPUs, `mig` for MIG devices."""
    claim_name: str = Field(default="gpu", pattern=DNS_LABEL, max_length=63)
    """The pod's `spec.resourceClaims` entry, the model container's `resources.claims` entry and the request name."""
    template_prefix: str = Field(default="gpuguard-gpu", pattern=DNS_LABEL, max_length=40)
    """ResourceClaimTemplate names are this prefix, the shape and a hash of the template's content."""


class Weights(PolicyModel):
    """How the extender's prioritize score weighs packing against idleness."""

    mig_fit: float = Field(default=1.0, ge=0)
    """Weight of how well the request packs onto the node's free GPUs or MIG slots."""
    utilization: float = Field(default=1.0, ge=0)
    """Weight of how idle the node's candidate GPUs are."""


class GroupAwareness(PolicyModel):
    """Keep the pods of one serving group (a LeaderWorkerSet group, a multi-node predictor's head and workers) on one
    GPU product and inside one topology domain (`gpuguard.policy.grouping`)."""

    enabled: bool = True
    """Whether the extender ranks the nodes of a group's domain and product first for the group's next pods."""
    topology_key: str = Field(default="nvidia.com/gpu.clique", max_length=317)
    """The node label whose value is a topology domain: GPU Feature Discovery's NVLink clique (multi-node NVLink
    systems), a rack label, or `topology.kubernetes.io/zone`. "" keeps groups on one product only."""


class Scheduling(PolicyModel):
    """How the scheduler extender filters and scores nodes."""

    weights: Weights = Weights()
    """Relative weights of MIG/GPU fit and utilization in the node score."""
    max_gpu_utilization: float = Field(default=95, ge=0, le=100)
    """Percent; a node whose every candidate GPU is at or above this fails the filter."""
    metrics_max_age: Seconds = 120.0
    """Seconds (written 120s, 2m); older utilization is ignored (neutral), never trusted. dcgm-exporter samples
    every 30 s and Prometheus scrapes every 15-30 s, so 120 s tolerates a missed scrape or two."""
    fit: FitStrategy = "binpack"
    """binpack keeps whole nodes free for big requests; spread balances load across nodes."""
    group_placement: GroupAwareness = GroupAwareness()
    """Keep the pods of one serving group on one GPU product and inside one topology domain (on by default)."""


class ConfigMapRef(PolicyModel):
    """A ConfigMap by namespace and name."""

    namespace: str = "gpu-operator"
    """The GPU Operator's namespace by default."""
    name: str = "gpuguard-time-slicing"
    """The ConfigMap the device plugin is pointed at (GPU Operator: `devicePlugin.config.name`)."""


class NodeLabelMatch(PolicyModel):
    """Which nodes an entry applies to."""

    node_labels: dict[str, str] = Field(default_factory=dict)
    """Node labels that must all be present with these values."""


class TimeSlicingNodes(PolicyModel):
    """Nodes whose labels all match get `replicas` time-sliced shares of each GPU."""

    match: NodeLabelMatch
    """The nodes, by label; the first entry that matches a node applies to it."""
    replicas: int
    """Time-sliced shares per GPU, at least 2."""

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
    """Time-slicing of whole GPUs, which the node agent applies through the NVIDIA device plugin's config."""

    config_map: ConfigMapRef = ConfigMapRef()
    """The NVIDIA device plugin's config ConfigMap the agent writes named entries into."""
    rename_by_default: bool = False
    """true: shares are advertised as `nvidia.com/gpu.shared` instead of `nvidia.com/gpu`."""
    fail_requests_greater_than_one: bool = False
    """true: the device plugin refuses a pod asking for more than one share (a share is not a whole GPU)."""
    nodes: tuple[TimeSlicingNodes, ...] = ()
    """Which nodes are time-sliced, and how many ways."""


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
    """The value of the pool label on this pool's nodes."""
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
    """true: `gpuguard mig-layouts` changes the pools' layouts; false: it only plans with --dry-run."""
    pool_label: str = "gpuguard.io/mig-pool"
    """The node label naming a node's pool; nodes without it are never changed."""
    interval: Seconds = 30.0
    """Seconds between planning rounds."""
    pools: tuple[MigPool, ...] = ()
    """The node pools whose layouts follow demand, each with the layouts it may take."""
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
    """The policy file (the chart's ConfigMap key `policy.yaml`)."""

    api_version: Literal["gpuguard.io/v1"]
    """The format version; a version this gpuguard does not read is an error."""
    kind: Literal["GpuPolicy"]
    """Always `GpuPolicy`."""
    mode: Mode = "enforce"
    """enforce: deny violations; warn: admit them with warnings; audit: admit, only log and count."""
    namespaces: dict[str, NamespaceOverride] = Field(default_factory=dict)
    """Per-namespace overrides; an exact name wins over globs, then globs are tried in file order."""
    defaults: PodDefaults = PodDefaults()
    """What in-scope predictor pods get when no rule says otherwise."""
    rules: tuple[Rule, ...] = ()
    """Tried in order; the first that matches replaces each defaults key it sets."""
    limits: Limits = Limits()
    """What validation refuses."""
    user_overrides: tuple[UserOverride, ...] = ()
    """Which gpuguard.io/* annotations users may set; none unless the admin lists them."""
    scheduling: Scheduling = Scheduling()
    """The scheduler extender's filter and scores."""
    time_slicing: TimeSlicing = TimeSlicing()
    """Which nodes the agent time-slices."""
    gpu_resource_types: tuple[str, ...] = ()
    """Extended resources that are GPUs on this cluster besides the built-in NVIDIA, AMD, Intel and Gaudi names (like
    KServe's `customGPUResourceTypeList`); counted and judged as GPUs, one device each."""
    externally_managed: ExternallyManaged = ExternallyManaged()
    """Pods whose GPUs another manager hands out (DRA, KAI-Scheduler, HAMi): what gpuguard adds to them and checks."""
    dra: Dra = Dra()
    """How `allocation: dra` GPUs become ResourceClaims: DeviceClass names, the claim name, the template prefix."""
    dynamic_mig: DynamicMig = DynamicMig()
    """Demand-driven MIG layouts per node pool, applied through the MIG manager; off unless `enabled`."""
    mig_catalog: CatalogSpec | None = None
    """GPU models to add to gpuguard's MIG catalog, or to replace (same name), in the schema of its catalog file:
    for GPUs newer than this release. Their profiles become known to validation and their geometry to the extender."""

    @property
    def catalog(self) -> MigCatalog:
        """The MIG catalog this policy sees: the shipped one with `migCatalog`'s entries."""
        return mig.catalog_for(self.mig_catalog)

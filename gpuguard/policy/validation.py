"""The GPU requests gpuguard refuses, each reported with the container, the offending value and the fix.

Validation reads the pod's `GpuDemand` (`gpuguard.policy.demand`), so every rule holds for every container (init
containers and native sidecars included), every GPU kind and every channel:
- each GPU quantity is a whole number, and a request equals its limit;
- `maxGpusPerPod` bounds the pod's GPU-equivalents: whole GPUs, replicas and other vendors' devices count 1 each, a MIG
  instance its compute slices over its GPU's (`7g.80gb` is a whole H100, `1g.10gb` a seventh), KAI fractions their
  fraction times their devices;
- MIG profiles exist in the catalog, on the pinned product, and are allowed;
- whole GPUs, MIG instances and time-sliced replicas are never mixed in one pod;
- time-slicing only where the namespace allows it;
- when `denyPrivilegedGpuPods` is on, no container of a pod that gets GPUs is privileged, and no container of any pod
  gets GPUs from the runtime without a request (`NVIDIA_VISIBLE_DEVICES`, device mounts, CDI annotations).
Pods whose GPUs another component hands out (DRA, KAI, HAMi) are judged the same unless the policy's
`externallyManaged.validation` is `deviceAccess`. Whether a problem denies, warns or is only counted is the caller's
decision (the mode). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from typing import Any

from gpuguard.policy import mig, podspec
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.demand import ContainerGpus, GpuDemand, device_share, pod_demand
from gpuguard.policy.loading import PRODUCT_LABEL, unknown_profile_message
from gpuguard.policy.model import Limits
from gpuguard.policy.quantity import QuantityError, parse_quantity, quoted, whole_number
from gpuguard.policy.resolve import Effective, Problem
from gpuguard.policy.resources import ResourceKind, resource_kind

WHOLE_NUMBER_FIX = (
    "GPUs are whole devices: ask for a whole number such as 1, or for a MIG slice such as nvidia.com/mig-1g.10gb: 1"
)
QUANTITY = "quantity"
EXCLUSIVE_KINDS: Mapping[ResourceKind, str] = {
    "whole": "whole GPUs", "mig": "MIG devices", "shared": "time-sliced GPUs",
}
"""The NVIDIA kinds a pod may not mix, and how messages name them."""


def pod_demand_under(pod: Mapping[str, Any], effective: Effective) -> GpuDemand:
    """The pod's demand with the policy's custom GPU types and external schedulers."""
    return pod_demand(pod, custom=effective.gpu_types, schedulers=frozenset(effective.external.schedulers))


def pod_problems(pod: Mapping[str, Any], effective: Effective, demand: GpuDemand | None = None) -> list[Problem]:
    """Every problem of a pod under these settings, plus the user-annotation problems `resolve` found."""
    demand = demand if demand is not None else pod_demand_under(pod, effective)
    limits, catalog = effective.limits, effective.catalog
    product = podspec.text(podspec.mapping(podspec.spec_of(pod).get("nodeSelector")).get(PRODUCT_LABEL))
    problems = list(effective.problems)
    if not (demand.owner and effective.external.validation == "deviceAccess"):
        for container in demand.containers:
            problems += container_problems(container, limits, product=product, custom=demand.custom, catalog=catalog)
        problems += _count_problems(demand, limits, product, catalog)
        problems += _mixing_problems(demand)
        problems += _sharing_problems(effective)
    if limits.deny_privileged_gpu_pods:
        problems += _access_problems(demand)
    return problems


def container_problems(
    container: ContainerGpus, limits: Limits, *, product: str | None, custom: frozenset[str] = frozenset(),
    catalog: MigCatalog = mig.BUILTIN,
) -> Iterator[Problem]:
    ref = container.ref
    yield from _quantity_problems(ref, custom)
    for name in container.positive:
        kind = resource_kind(name, custom)
        if kind == "mig":
            yield from _mig_problems(ref, name, limits, product, catalog)
        elif kind == "shared" and not limits.allow_time_slicing:
            yield Problem(
                ref.where,
                f"asks for a time-sliced GPU ({name}), which this namespace does not allow",
                "ask for a whole GPU or a MIG slice instead",
            )


def _quantity_problems(ref: podspec.ContainerRef, custom: frozenset[str]) -> Iterator[Problem]:
    limits = {k: v for k, v in ref.limits.items() if resource_kind(k, custom)}
    requests = {k: v for k, v in ref.requests.items() if resource_kind(k, custom)}
    for name in sorted({*limits, *requests}):
        limit, request = limits.get(name), requests.get(name)
        bad = [(kind, q) for kind, q in (("limit", limit), ("request", request)) if q is not None and whole_number(q) is None]
        if len(bad) == 2 and _same_text(limit, request):
            bad = [("limit and request", limit)]
        for kind, quantity in bad:
            yield Problem(ref.where, f"{name} {kind} {quoted(quantity)} is not a whole number", WHOLE_NUMBER_FIX,
                          QUANTITY)
        if bad:
            continue
        if request is not None and limit is None:
            yield Problem(
                ref.where,
                f"{name} has a request ({quoted(request)}) but no limit; Kubernetes requires extended resources in limits",
                f"set resources.limits.{name} to {quoted(request)}",
                QUANTITY,
            )
        elif request is not None and not _same_quantity(request, limit):
            yield Problem(
                ref.where,
                f"{name} request {quoted(request)} differs from its limit {quoted(limit)}",
                "make the request equal to the limit, or leave the request out (it defaults to the limit)",
                QUANTITY,
            )


def _mig_problems(
    ref: podspec.ContainerRef, resource: str, limits: Limits, product: str | None, catalog: MigCatalog
) -> Iterator[Problem]:
    """Through the model of the pod's product when it selects one; through every model of the catalog otherwise."""
    profile = mig.profile_from_resource(resource) or resource
    model = catalog.model_for_product(product) if product else None
    if model is None and not catalog.knows(profile):
        yield Problem(ref.where, f"{resource}: {unknown_profile_message(profile, catalog)}",
                      "use a profile your GPUs offer, or add their model to the policy's migCatalog")
        return
    if limits.allowed_mig_profiles and profile not in limits.allowed_mig_profiles:
        allowed = ", ".join(mig.mig_resource_name(p) for p in limits.allowed_mig_profiles)
        yield Problem(ref.where, f"MIG profile {quoted(profile)} ({resource}) is not allowed", f"use one of: {allowed}")
    if model is not None and model.profile(profile) is None:
        yield Problem(
            ref.where,
            f"{resource} does not exist on {product} ({model.name})",
            f"use one of its profiles: {', '.join(model.profile_names)}",
        )


def _count_problems(demand: GpuDemand, limits: Limits, product: str | None, catalog: MigCatalog) -> Iterable[Problem]:
    total = demand.gpus(product=product, catalog=catalog)
    if total <= limits.max_gpus_per_pod:
        return ()
    parts = [_counted(name, n, product, catalog) for name, n in demand.resources]
    if demand.kai is not None:
        parts.append(f"{_number(demand.kai.gpus)} through KAI-Scheduler's gpu-fraction/gpu-memory")
    return (
        Problem(
            "pod",
            f"asks for {_number(total)} GPUs in all ({'; '.join(parts)}); the limit is {limits.max_gpus_per_pod} per pod",
            f"ask for at most {limits.max_gpus_per_pod}, shard the model over more pods, or use a smaller MIG profile",
        ),
    )


def _counted(resource: str, count: int, product: str | None, catalog: MigCatalog) -> str:
    if resource_kind(resource) != "mig":
        return f"{count} {resource}"
    share = device_share(resource, product=product, catalog=catalog)
    each = "a whole GPU each" if share == 1 else f"{share} of a GPU each"
    return f"{count} {resource} = {_number(count * share)} GPUs at {each}"


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):.2f}"


def _mixing_problems(demand: GpuDemand) -> Iterable[Problem]:
    by_kind: dict[ResourceKind, list[str]] = {}
    holders: set[str] = set()
    for container in demand.containers:
        for name in (*container.positive, *container.unreadable):  # a broken count still names its kind
            kind = resource_kind(name, demand.custom)
            if kind is not None and kind in EXCLUSIVE_KINDS:
                by_kind.setdefault(kind, []).append(name)
                holders.add(container.ref.where)
    if len(by_kind) < 2:
        return ()
    named = [f"{label} ({', '.join(dict.fromkeys(by_kind[k]))})" for k, label in EXCLUSIVE_KINDS.items() if k in by_kind]
    where = holders.pop() if len(holders) == 1 else "pod"
    return (Problem(where, f"asks for {' and '.join(named)} together",
                    "ask for one kind only in the whole pod: whole GPUs, one MIG profile, or time-sliced GPUs"),)


def _sharing_problems(effective: Effective) -> Iterable[Problem]:
    if effective.gpu.sharing is None or effective.limits.allow_time_slicing:
        return ()
    return (
        Problem(
            f"rule {effective.rule!r}" if effective.rule else "policy",
            "asks for a time-sliced GPU, which this namespace does not allow",
            "remove gpuguard.io/sharing, or ask for a whole GPU or a MIG slice",
        ),
    )


def _access_problems(demand: GpuDemand) -> Iterator[Problem]:
    for access in demand.access:
        if access.kind == "privileged" and demand.gets_gpu:
            yield Problem(
                access.ref.where,
                "is privileged in a pod that gets GPUs; a privileged container sees every GPU on the node",
                "remove securityContext.privileged (GPU access does not need it)",
            )
        elif access.kind == "visible":
            yield Problem(
                access.ref.where,
                f"{access.how}: the NVIDIA container runtime then hands it GPUs nobody requested (every GPU, for all)",
                "remove it and ask for GPUs through resources.limits; gpuguard gives the model container its GPU",
            )
    for key in demand.cdi:
        yield Problem(
            f"annotation {key}",
            "asks a CDI-enabled runtime for NVIDIA devices that Kubernetes does not account for",
            "remove the annotation and ask for GPUs through resources.limits",
        )


def _same_text(a: object, b: object) -> bool:
    return str(a) == str(b)


def _same_quantity(a: object, b: object) -> bool:
    try:
        return parse_quantity(a) == parse_quantity(b)
    except QuantityError:
        return False

"""The GPU requests gpuguard refuses, each reported with the container, the offending value and the fix.

The same checks run on pods (after mutation, as kube-apiserver calls validating webhooks last) and on the
containers of an InferenceService, so `kubectl apply` of a bad InferenceService fails at once instead of its
ReplicaSet quietly failing to create pods. Whether a problem denies, warns or is only counted is the caller's
decision (the mode). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from gpuguard.policy import mig, podspec
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.loading import PRODUCT_LABEL, unknown_profile_message
from gpuguard.policy.model import Limits
from gpuguard.policy.podspec import ContainerRef
from gpuguard.policy.quantity import QuantityError, parse_quantity, quoted, whole_number
from gpuguard.policy.resolve import Effective, Problem

WHOLE_NUMBER_FIX = (
    "GPUs are whole devices: ask for a whole number such as 1, or for a MIG slice such as nvidia.com/mig-1g.10gb: 1"
)


def pod_problems(pod_spec: Mapping[str, Any], effective: Effective) -> list[Problem]:
    """Every problem in a pod spec under these settings, plus the user-annotation problems `resolve` found."""
    refs = list(podspec.all_containers(pod_spec))
    product = podspec.text(podspec.mapping(pod_spec.get("nodeSelector")).get(PRODUCT_LABEL))
    problems = list(effective.problems)
    problems += containers_problems(refs, effective.limits, product=product, catalog=effective.catalog)
    problems += _sharing_problems(effective)
    return problems


def containers_problems(
    refs: Sequence[ContainerRef], limits: Limits, *, product: str | None, catalog: MigCatalog = mig.BUILTIN
) -> list[Problem]:
    """Per-container checks plus the per-pod GPU total (init containers run one at a time, so their max counts)."""
    problems = [p for ref in refs for p in container_problems(ref, limits, product=product, catalog=catalog)]
    total = _pod_whole_gpus(refs)
    if total > limits.max_gpus_per_pod:
        problems.append(
            Problem(
                "pod",
                f"asks for {total} whole GPUs ({podspec.WHOLE_GPU}); the limit is {limits.max_gpus_per_pod} per pod",
                f"ask for at most {limits.max_gpus_per_pod}, shard the model over more pods, or use a MIG profile",
            )
        )
    return problems


def container_problems(
    ref: ContainerRef, limits: Limits, *, product: str | None, catalog: MigCatalog = mig.BUILTIN
) -> Iterator[Problem]:
    yield from _quantity_problems(ref)
    resources = {**ref.gpu_requests(), **ref.gpu_limits()}
    mig_names = [name for name in resources if podspec.is_mig_resource(name)]
    for name in mig_names:
        yield from _mig_problems(ref, name, limits, product, catalog)
    if mig_names and podspec.WHOLE_GPU in resources:
        yield Problem(
            ref.where,
            f"asks for whole GPUs ({podspec.WHOLE_GPU}) and MIG devices ({', '.join(mig_names)}) together",
            "ask for one kind only: whole GPUs, or one MIG profile",
        )
    if podspec.SHARED_GPU in resources and not limits.allow_time_slicing:
        yield Problem(
            ref.where,
            f"asks for a time-sliced GPU ({podspec.SHARED_GPU}), which this namespace does not allow",
            "ask for a whole GPU or a MIG slice instead",
        )
    if resources and ref.privileged and limits.deny_privileged_gpu_pods:
        yield Problem(
            ref.where,
            "is privileged and asks for a GPU; a privileged container sees every GPU on the node",
            "remove securityContext.privileged (GPU access does not need it)",
        )


def _quantity_problems(ref: ContainerRef) -> Iterator[Problem]:
    limits, requests = ref.gpu_limits(), ref.gpu_requests()
    for name in sorted({*limits, *requests}):
        limit, request = limits.get(name), requests.get(name)
        bad = [(kind, q) for kind, q in (("limit", limit), ("request", request)) if q is not None and whole_number(q) is None]
        if len(bad) == 2 and _same_text(limit, request):
            bad = [("limit and request", limit)]
        for kind, quantity in bad:
            yield Problem(ref.where, f"{name} {kind} {quoted(quantity)} is not a whole number", WHOLE_NUMBER_FIX)
        if bad:
            continue
        if request is not None and limit is None:
            yield Problem(
                ref.where,
                f"{name} has a request ({quoted(request)}) but no limit; Kubernetes requires extended resources in limits",
                f"set resources.limits.{name} to {quoted(request)}",
            )
        elif request is not None and not _same_quantity(request, limit):
            yield Problem(
                ref.where,
                f"{name} request {quoted(request)} differs from its limit {quoted(limit)}",
                "make the request equal to the limit, or leave the request out (it defaults to the limit)",
            )


def _mig_problems(
    ref: ContainerRef, resource: str, limits: Limits, product: str | None, catalog: MigCatalog
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


def _pod_whole_gpus(refs: Sequence[ContainerRef]) -> int:
    def whole(ref: ContainerRef) -> int:
        return whole_number(ref.limits.get(podspec.WHOLE_GPU, ref.requests.get(podspec.WHOLE_GPU, 0))) or 0

    app = sum(whole(r) for r in refs if r.kind != "initContainers")
    init = max((whole(r) for r in refs if r.kind == "initContainers"), default=0)
    return max(app, init)


def _same_text(a: object, b: object) -> bool:
    return str(a) == str(b)


def _same_quantity(a: object, b: object) -> bool:
    try:
        return parse_quantity(a) == parse_quantity(b)
    except QuantityError:
        return False

"""The ResourceClaimTemplates `allocation: dra` gives pods: one per GPU shape the policy can produce, named from content.

A shape is what a policy `gpu:` becomes as a claim (`resource.k8s.io/v1`): `count` whole GPUs on the GPU DeviceClass,
or one MIG instance on the MIG DeviceClass with a CEL selector on the NVIDIA driver's `profile` attribute; where the
policy pins a product (its `nvidia.com/gpu.product` node selector), a CEL selector on the driver's `productName`
pins the devices instead of the node. GFD's product label is the NVML name with spaces turned into dashes (and
characters outside `[A-Za-z0-9_.-]` dropped), so the selector matches the name with `[ -]` where the label has a dash;
`matches` is CEL's standard RE2 function, and the pattern needs no escapes (`.` is written `[.]`).

The template's name is `<dra.templatePrefix>-<shape>-<hash of its spec>`: a changed shape or class name is a new
template, so one is never edited in place and pods made from an old one keep what they were made from. Sharing
(time-slicing) has no per-pod claim form (pods share a GPU only by naming one ResourceClaim together), so it produces
no template. `plan_templates` says what the reconciler must create and delete: missing templates are created,
gpuguard's templates no shape needs are deleted only once no pod names them. Pure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gpuguard.policy import mig
from gpuguard.policy.dra import DRIVER
from gpuguard.policy.model import Dra, GpuSpec, Policy, Rule
from gpuguard.policy.podspec import JsonObject, mapping, sequence, spec_of
from gpuguard.policy.resolve import allocation_for, namespace_mode_and_limits, rule_may_match

PRODUCT_LABEL = "nvidia.com/gpu.product"
API_VERSION = "resource.k8s.io/v1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "gpuguard"}
SHAPE_LABEL = "gpuguard.io/gpu-shape"
_LABEL_CHARS = re.compile(r"^[A-Za-z0-9_.-]+$")
HASH_CHARS = 10


@dataclass(frozen=True, slots=True, order=True)
class GpuShape:
    """One claim shape: `count` whole GPUs, or one instance of `profile`; on `product` (a GFD label) if set."""

    count: int = 0
    profile: str = ""
    product: str = ""

    @property
    def slug(self) -> str:
        """The readable part of the template name: `2`, `mig-1g-10gb`, `1-h100-80gb-hbm3`."""
        what = f"mig-{_dns(self.profile)}" if self.profile else str(self.count)
        if not self.product:
            return what
        product = _dns(self.product.lower().removeprefix("nvidia-"))
        return f"{what}-{product}"[:40].rstrip("-")

    @property
    def resource(self) -> str:
        """The extended resource the same shape is in device-plugin terms (how the extender counts it)."""
        return mig.mig_resource_name(self.profile) if self.profile else "nvidia.com/gpu"


def _dns(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def shape_of(gpu: GpuSpec, *, product: str | None) -> GpuShape | None:
    """The claim shape of a policy GPU; None for no GPU and for time-slicing (no per-pod claim form)."""
    pinned = product if product and _LABEL_CHARS.match(product) else ""
    if gpu.mig_profile is not None:
        return GpuShape(profile=gpu.mig_profile, product=pinned)
    if gpu.count:
        return GpuShape(count=gpu.count, product=pinned)
    return None


def product_pattern(label: str) -> str:
    """An RE2 pattern for the NVML names GFD turns into this label."""
    return "^" + "".join("[ -]" if c == "-" else "[.]" if c == "." else c for c in label) + "$"


def claim_spec(shape: GpuShape, dra: Dra) -> dict[str, Any]:
    """The ResourceClaim spec of a shape (a template's `spec.spec`)."""
    attribute = f"device.attributes['{DRIVER}']"
    selectors = []
    if shape.profile:
        selectors.append({"cel": {"expression": f"{attribute}.profile == '{shape.profile}'"}})
    if shape.product:
        selectors.append({"cel": {"expression": f"{attribute}.productName.matches('{product_pattern(shape.product)}')"}})
    exactly: dict[str, Any] = {
        "deviceClassName": dra.device_classes.mig if shape.profile else dra.device_classes.gpu,
        "allocationMode": "ExactCount",
        "count": 1 if shape.profile else shape.count,
    }
    if selectors:
        exactly["selectors"] = selectors
    return {"devices": {"requests": [{"name": dra.claim_name, "exactly": exactly}]}}


def template_name(shape: GpuShape, dra: Dra) -> str:
    text = json.dumps(claim_spec(shape, dra), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]
    return f"{dra.template_prefix}-{shape.slug}-{digest}"


def template(shape: GpuShape, dra: Dra, *, namespace: str) -> dict[str, Any]:
    """The ResourceClaimTemplate object for a shape in a namespace."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": template_name(shape, dra),
            "namespace": namespace,
            "labels": {**MANAGED_BY, SHAPE_LABEL: shape.slug},
        },
        "spec": {"spec": claim_spec(shape, dra)},
    }


# ----------------------------------------------------------------------------------------- what a policy produces


def policy_shapes(policy: Policy, namespace: str) -> tuple[GpuShape, ...]:
    """Every shape a pod in `namespace` can be given under `allocation: dra`, sorted.

    The defaults and every rule that may match there, each under its own allocation mode; where users may set
    `gpuguard.io/gpu-count` or `gpuguard.io/mig-profile`, every count up to the namespace's `maxGpusPerPod` and
    every allowed profile (all the catalog's when none is listed), on each product those contexts pin.
    """
    found: set[GpuShape] = set()
    products: set[str] = set()
    for gpu, product in _contexts(policy, namespace):
        shape = shape_of(gpu, product=product)
        products.add(shape.product if shape is not None else "")
        if shape is not None:
            found.add(shape)
    if products:
        found |= set(_override_shapes(policy, namespace, products))
    return tuple(sorted(found))


def _contexts(policy: Policy, namespace: str) -> Iterator[tuple[GpuSpec, str | None]]:
    defaults = policy.defaults
    if allocation_for(policy, None, namespace) == "dra":
        yield defaults.gpu, defaults.node_selector.get(PRODUCT_LABEL)
    for rule in policy.rules:
        if rule_may_match(rule, namespace) and allocation_for(policy, rule, namespace) == "dra":
            yield _rule_gpu(rule, defaults.gpu), _rule_product(rule, defaults.node_selector)


def _rule_gpu(rule: Rule, fallback: GpuSpec) -> GpuSpec:
    return rule.gpu if rule.gpu is not None else fallback


def _rule_product(rule: Rule, fallback: Mapping[str, str]) -> str | None:
    selector = rule.node_selector if rule.node_selector is not None else fallback
    return selector.get(PRODUCT_LABEL)


def _override_shapes(policy: Policy, namespace: str, products: set[str]) -> Iterator[GpuShape]:
    _, limits = namespace_mode_and_limits(policy, namespace)
    allowed = policy.user_overrides
    for product in products:
        if "gpu-count" in allowed:
            yield from (GpuShape(count=n, product=product) for n in range(1, limits.max_gpus_per_pod + 1))
        if "mig-profile" in allowed:
            profiles = limits.allowed_mig_profiles or policy.catalog.profile_names
            yield from (GpuShape(profile=p, product=product) for p in profiles)


def templates_for(policy: Policy, namespace: str) -> list[dict[str, Any]]:
    """The ResourceClaimTemplates gpuguard keeps in `namespace` (what `gpuguard dra templates` prints)."""
    return [template(shape, policy.dra, namespace=namespace) for shape in policy_shapes(policy, namespace)]


class _Same:
    """A policy as a cache key by identity: a loaded policy is immutable, and reloading makes a new object."""

    __slots__ = ("policy",)

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __hash__(self) -> int:
        return id(self.policy)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.policy is self.policy


@lru_cache(maxsize=256)
def _known(key: _Same, namespace: str) -> Mapping[str, JsonObject]:
    policy = key.policy
    return {template_name(s, policy.dra): claim_spec(s, policy.dra) for s in policy_shapes(policy, namespace)}


def known_claim_specs(policy: Policy, namespace: str) -> Mapping[str, JsonObject]:
    """Template name -> claim spec for every template gpuguard keeps in the namespace (cached per policy object)."""
    return _known(_Same(policy), namespace)


# ---------------------------------------------------------------------------------------------------- reconciling

TemplateKey = tuple[str, str]
"""(namespace, name)."""


@dataclass(frozen=True, slots=True)
class TemplatePlan:
    """What to change so every namespace holds the templates the policy needs there."""

    create: tuple[dict[str, Any], ...] = ()
    delete: tuple[TemplateKey, ...] = ()
    """gpuguard's templates no shape needs any more and no pod names."""
    drifted: tuple[TemplateKey, ...] = ()
    """gpuguard's templates whose content no longer matches their name (someone edited them): never edited back in
    place, never deleted while wanted; reported."""

    @property
    def empty(self) -> bool:
        return not (self.create or self.delete)


def plan_templates(
    policy: Policy,
    *,
    namespaces: Iterable[str],
    existing: Mapping[TemplateKey, JsonObject],
    referenced: Iterable[TemplateKey],
) -> TemplatePlan:
    """Create what is missing, delete what is gpuguard's, unneeded and unreferenced.

    `existing` are gpuguard's templates (labelled `app.kubernetes.io/managed-by: gpuguard`) with their claim spec
    (`spec.spec`); `referenced` the templates pods name in `spec.resourceClaims`, pending pods included.
    """
    wanted = {(ns, t["metadata"]["name"]): t for ns in sorted(set(namespaces)) for t in templates_for(policy, ns)}
    used = set(referenced)
    create = tuple(t for key, t in wanted.items() if key not in existing)
    delete = tuple(sorted(k for k in existing if k not in wanted and k not in used))
    drifted = tuple(sorted(k for k, spec in existing.items() if k in wanted and spec != wanted[k]["spec"]["spec"]))
    return TemplatePlan(create, delete, drifted)


def pod_template_refs(pod: JsonObject) -> frozenset[TemplateKey]:
    """The ResourceClaimTemplates a pod names (its claims are made from them while it exists)."""
    metadata = mapping(pod.get("metadata"))
    namespace = str(metadata.get("namespace") or "default")
    return frozenset(
        (namespace, str(name)) for c in sequence(spec_of(pod).get("resourceClaims"))
        if (name := mapping(c).get("resourceClaimTemplateName"))
    )


def is_managed(template: JsonObject) -> bool:
    labels = mapping(mapping(template.get("metadata")).get("labels"))
    return all(labels.get(k) == v for k, v in MANAGED_BY.items())

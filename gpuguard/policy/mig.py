"""The MIG catalog as gpuguard uses it: the shipped catalog, loaded and checked at import, and its lookups.

The models and profiles live in one data file, `gpuguard/policy/mig-catalog.yaml` (schema in
`gpuguard.policy.catalog_schema`, values in `gpuguard.policy.catalog`); nothing else lists them. Importing this
module reads and validates that file, so a broken catalog stops gpuguard at start with the exact field named.

API (what the other components call):
- `BUILTIN` (a `MigCatalog`, with `CATALOG` its models) is the shipped catalog. A policy's catalog is
  `policy.catalog` (`gpuguard.policy.model.Policy`): `BUILTIN` extended by the policy's `migCatalog` entries through
  `catalog_for(spec)`. Whatever must honour an admin's additions takes that catalog: the webhook's checks (through
  `Effective.catalog`), the policy loader's semantic checks, the extender's node facts and utilization folding.
- Per-model lookups take the catalog keyword-only and default to `BUILTIN`: `model_for_product(label, catalog=)`,
  `model_named(name, catalog=)`, `models_offering(profile, catalog=)`, `is_known_profile(name, catalog=)`,
  `all_profile_names(catalog=)`, `all_mig_resource_names(catalog=)`. The same questions are methods of `MigCatalog`.
- Naming needs no catalog: `mig_resource_name` / `profile_from_resource` (`+` <-> `.`, `-me` kept),
  `base_product` (GFD's `-SHARED` / `-MIG-<profile>` suffixes off), `product_label_from_name` (NVML name -> label).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml
from pydantic import ValidationError

from gpuguard.policy.catalog import (
    MIG_RESOURCE_PREFIX,
    GpuModel,
    MigCatalog,
    MigProfile,
    base_product,
    mig_resource_name,
    product_label_from_name,
    profile_from_resource,
)
from gpuguard.policy.catalog_schema import CatalogDocument, CatalogSpec

CATALOG_FILE = "mig-catalog.yaml"

__all__ = [
    "BUILTIN", "CATALOG", "CATALOG_FILE", "MIG_RESOURCE_PREFIX", "CatalogError", "GpuModel", "MigCatalog",
    "MigProfile", "all_mig_resource_names", "all_profile_names", "base_product", "catalog_for", "catalog_text",
    "is_known_profile", "load_catalog", "mig_resource_name", "model_for_product", "model_named", "models_offering",
    "product_label_from_name", "profile_from_resource",
]


class CatalogError(ValueError):
    """The shipped catalog file does not follow its schema (a bug in this gpuguard, found at import)."""


def catalog_text() -> str:
    return resources.files("gpuguard.policy").joinpath(CATALOG_FILE).read_text(encoding="utf-8")


def load_catalog(text: str) -> MigCatalog:
    """A catalog from the text of a catalog file; `CatalogError` naming every wrong field."""
    try:
        document = CatalogDocument.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as error:
        raise CatalogError(f"{CATALOG_FILE} is invalid: {error}") from None
    return MigCatalog.of(document.to_models())


@lru_cache(maxsize=16)
def catalog_for(spec: CatalogSpec | None) -> MigCatalog:
    """`BUILTIN` with a policy's `migCatalog` entries (cached: a policy asks on every admission)."""
    return BUILTIN.extended(spec.to_models()) if spec is not None and spec.models else BUILTIN


BUILTIN = load_catalog(catalog_text())
CATALOG: tuple[GpuModel, ...] = BUILTIN.models


def model_for_product(label: str, *, catalog: MigCatalog = BUILTIN) -> GpuModel | None:
    """The model for a `nvidia.com/gpu.product` label value, or None for GPUs without MIG."""
    return catalog.model_for_product(label)


def model_named(name: str, *, catalog: MigCatalog = BUILTIN) -> GpuModel | None:
    return catalog.model_named(name)


def models_offering(profile: str, *, catalog: MigCatalog = BUILTIN) -> tuple[GpuModel, ...]:
    """Every model that offers a profile of this name, each with its own geometry."""
    return catalog.models_offering(profile)


def is_known_profile(name: str, *, catalog: MigCatalog = BUILTIN) -> bool:
    return catalog.knows(name)


def all_profile_names(*, catalog: MigCatalog = BUILTIN) -> tuple[str, ...]:
    """Every profile some model offers, sorted and without duplicates."""
    return catalog.profile_names


def all_mig_resource_names(*, catalog: MigCatalog = BUILTIN) -> tuple[str, ...]:
    """Every `nvidia.com/mig-*` resource name: kube-scheduler's managedResources accepts no wildcards."""
    return catalog.resource_names

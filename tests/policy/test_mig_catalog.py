"""The MIG catalog: checked against the GPU Operator's layouts and published placements, looked up per model,
resource names mapped both ways, its schema refusing broken tables, and policies extending it."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gpuguard.policy import mig
from gpuguard.policy.catalog import GpuModel, MigCatalog
from gpuguard.policy.catalog_schema import CatalogDocument, CatalogSpec
from gpuguard.policy.gpustate import place_instances
from tests.conftest import DATA

FACTS = yaml.safe_load((DATA / "mig-layouts.yaml").read_text())
ROWS = [*FACTS["configmap"], *FACTS["beyond-configmap"]]


def models_of(row: dict[str, Any]) -> list[GpuModel]:
    """The catalog models a fact row stands for, through its PCI device ids or its product label."""
    found = [mig.BUILTIN.model_for_device_id(d) for d in row.get("deviceIds", ())]
    if "product" in row:
        found.append(mig.model_for_product(row["product"]))
    assert found and all(m is not None for m in found), f"{row['gpus']}: not every id or label is in the catalog"
    return [m for m in found if m is not None]


LAYOUTS = [
    pytest.param(model, name, counts, id=f"{model.name}-{name}")
    for row in ROWS for model in {m.name: m for m in models_of(row)}.values()
    for name, counts in row["layouts"].items()
]


# ------------------------------------------------------------------------------------- against upstream layouts


@pytest.mark.parametrize(("model", "layout", "counts"), LAYOUTS)
def test_every_upstream_layout_is_offered_and_placeable_under_the_catalog_start_slots(
    model: GpuModel, layout: str, counts: dict[str, int]
) -> None:
    for profile in counts:
        assert model.profile(profile) is not None, f"{layout}: {model.name} lacks {profile}"
    placed = place_instances(model, counts)
    assert placed is not None, f"{layout} does not fit one {model.name} under the catalog's start slots"
    assert sorted(s.profile for s in placed) == sorted(p for p, n in counts.items() for _ in range(n))


@pytest.mark.parametrize(("model", "layout", "counts"), [p for p in LAYOUTS if len(p.values[2]) == 1])
def test_a_single_profile_layout_is_the_catalogs_max_count_and_one_more_does_not_fit(
    model: GpuModel, layout: str, counts: dict[str, int]
) -> None:
    ((name, count),) = counts.items()
    profile = model.profile(name)
    assert profile is not None and profile.max_count == count
    assert place_instances(model, {name: count + 1}) is None


def test_every_catalogued_model_and_profile_has_an_upstream_layout() -> None:
    covered: dict[str, set[str]] = {}
    for row in ROWS:
        for model in models_of(row):
            covered.setdefault(model.name, set()).update(p for counts in row["layouts"].values() for p in counts)
    assert set(covered) == {m.name for m in mig.CATALOG}
    for model in mig.CATALOG:
        assert set(model.profile_names) == covered[model.name], model.name


@pytest.mark.parametrize("entry", FACTS["placements"], ids=lambda e: e["product"])
def test_start_slots_are_those_nvidia_smi_lists_on_real_gpus(entry: dict[str, Any]) -> None:
    model = mig.model_for_product(entry["product"])
    assert model is not None
    for name, listing in entry["profiles"].items():
        starts, size = re.fullmatch(r"\{([0-9,]+)\}:([0-9]+)", listing).groups()  # type: ignore[union-attr]
        profile = model.profile(name)
        assert profile is not None, name
        assert (profile.starts, profile.size) == (tuple(int(s) for s in starts.split(",")), int(size)), name


def test_every_model_names_its_sources_and_they_are_described() -> None:
    document = CatalogDocument.model_validate(yaml.safe_load(mig.catalog_text()))
    for model in document.models:
        cited = re.findall(r"[a-z][a-z0-9.-]+(?= \()|^[a-z][a-z0-9.-]+$", model.source)
        assert cited, f"{model.name} cites no source"
        assert set(cited) <= set(document.sources), f"{model.name} cites an undescribed source: {cited}"


# ------------------------------------------------------------------------------------------- lookups per model


@pytest.mark.parametrize(
    ("label", "model"),
    [
        ("NVIDIA-A100-SXM4-40GB", "A100-40GB"),
        ("A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA-A100-80GB-PCIe", "A100-80GB"),
        ("NVIDIA-A800-SXM4-80GB", "A100-80GB"),
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3-SHARED", "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "H100-80GB"),
        ("NVIDIA-H800", "H100-80GB"),
        ("NVIDIA-H100-NVL-MIG-1g.12gb", "H100-94GB"),
        ("NVIDIA-GH200-480GB", "H100-96GB"),
        ("NVIDIA-H20", "H100-96GB"),
        ("NVIDIA-GH200-144G-HBM3e", "GH200-144GB"),
        ("NVIDIA-H200", "H200-141GB"),
        ("NVIDIA-H200-NVL", "H200-141GB"),
        ("NVIDIA-B200", "B200"),
        ("NVIDIA-GB200-MIG-1g.23gb", "GB200"),
        ("NVIDIA-B300-SXM6-AC", "B300"),
        ("NVIDIA-GB300", "GB300"),
        ("NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition", "RTX-PRO-6000"),
        ("NVIDIA-RTX-PRO-6000-Blackwell-Max-Q-Workstation-Edition-SHARED", "RTX-PRO-6000"),
        ("NVIDIA-RTX-PRO-5000-Blackwell", "RTX-PRO-5000"),
        ("NVIDIA-RTX-PRO-4500-Blackwell", "RTX-PRO-4500"),
        ("NVIDIA-A30", "A30"),
    ],
)
def test_product_labels_find_their_model_whatever_suffix_gfd_added(label: str, model: str) -> None:
    found = mig.model_for_product(label)
    assert found is not None and found.name == model


@pytest.mark.parametrize("label", ["Tesla-T4", "NVIDIA-L4", "NVIDIA-A10G", "NVIDIA-RTX-PRO-6000", ""])
def test_gpus_without_mig_are_not_in_the_catalog(label: str) -> None:
    assert mig.model_for_product(label) is None


def test_one_profile_name_has_each_models_own_geometry() -> None:
    gb300, h200 = mig.model_named("GB300"), mig.model_named("H200-141GB")
    assert gb300 is not None and h200 is not None
    assert {m.name for m in mig.models_offering("1g.35gb")} == {"GB300", "H200-141GB"}
    small, double = gb300.profile("1g.35gb"), h200.profile("1g.35gb")
    assert small is not None and double is not None
    assert (small.size, small.max_count, small.starts) == (1, 7, (0, 1, 2, 3, 4, 5, 6))
    assert (double.size, double.max_count, double.starts) == (2, 4, (0, 2, 4, 6))
    assert mig.models_offering("1g.11gb") == ()


def test_compute_slices_and_gb_come_from_the_profile_name() -> None:
    rtx = mig.model_named("RTX-PRO-6000")
    assert rtx is not None and rtx.placement_slots == 12
    profile = rtx.profile("2g.48gb+me.all")
    assert profile is not None
    assert (profile.compute_slices, profile.memory_gb, profile.memory_slices, profile.size) == (2, 48, 2, 6)


# --------------------------------------------------------------------------------------------- resource names


@pytest.mark.parametrize(
    ("profile", "resource"),
    [
        ("1g.10gb", "nvidia.com/mig-1g.10gb"),
        ("1g.10gb+me", "nvidia.com/mig-1g.10gb.me"),
        ("1g.24gb+me.all", "nvidia.com/mig-1g.24gb.me.all"),
        ("1g.24gb+gfx", "nvidia.com/mig-1g.24gb.gfx"),
        ("4g.96gb+gfx", "nvidia.com/mig-4g.96gb.gfx"),
        ("1g.24gb-me", "nvidia.com/mig-1g.24gb-me"),
        ("7g.278gb", "nvidia.com/mig-7g.278gb"),
    ],
)
def test_resource_names_map_both_ways_for_every_suffix(profile: str, resource: str) -> None:
    assert mig.mig_resource_name(profile) == resource
    assert mig.profile_from_resource(resource) == profile


def test_every_catalog_profile_round_trips_and_the_list_has_no_wildcard_or_duplicate() -> None:
    names = mig.all_mig_resource_names()
    assert len(names) == len(set(names)) == len(mig.all_profile_names())
    assert not [n for n in names if "*" in n]
    for profile in mig.all_profile_names():
        assert mig.profile_from_resource(mig.mig_resource_name(profile)) == profile
    assert mig.profile_from_resource("nvidia.com/gpu") is None


def test_product_labels_are_derived_from_nvml_names_as_gfd_does() -> None:
    assert mig.product_label_from_name("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert mig.product_label_from_name("NVIDIA A100-SXM4-40GB") == "NVIDIA-A100-SXM4-40GB"
    assert mig.product_label_from_name("Tesla T4") == "Tesla-T4"
    assert mig.product_label_from_name("NVIDIA RTX PRO 6000 Blackwell Server Edition") in mig.model_for_product(
        "NVIDIA-RTX-PRO-6000-Blackwell-Server-Edition").products  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------- schema


def entry(**changes: Any) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": "NEXT", "products": ["NVIDIA-Next"], "memoryGb": 80, "computeSlices": 7, "memorySlices": 8,
        "profiles": [{"name": "1g.10gb", "memorySlices": 1, "maxCount": 7, "starts": [0, 1, 2, 3, 4, 5, 6]},
                     {"name": "3g.40gb", "memorySlices": 4, "maxCount": 2, "starts": [0, 4]}],
    }
    return {**model, **changes}


def profile_with(**changes: Any) -> list[dict[str, Any]]:
    return [{"name": "3g.40gb", "memorySlices": 4, "maxCount": 2, "starts": [0, 4], **changes}]


@pytest.mark.parametrize(
    ("models", "fragment"),
    [
        ([entry(profiles=profile_with(name="3g.41gb"))], "4/8 of 80 GB is 40 GB, not 41"),
        ([entry(profiles=profile_with(starts=[0, 2]))], "cannot start at 2"),
        ([entry(profiles=profile_with(starts=[4, 0]))], "distinct and ascending"),
        ([entry(profiles=profile_with(maxCount=3))], "maxCount 3"),
        ([entry(profiles=profile_with(name="8g.80gb", memorySlices=8, maxCount=1, starts=[0]))], "8 compute slices"),
        ([entry(profiles=profile_with(name="3g.40gb+me!"))], "String should match pattern"),
        ([entry(products=["NVIDIA Next"])], "GFD would write 'NVIDIA-Next'"),
        ([entry(), entry(name="OTHER")], "product label 'NVIDIA-Next' is listed more than once"),
        ([entry(), entry(products=["NVIDIA-Other"])], "model name 'NEXT' is listed more than once"),
        ([entry(profiles=[*profile_with(), *profile_with()])], "3g.40gb is listed twice"),
        ([entry(memorySlices=4, placementSlots=6, profiles=profile_with(memorySlices=1, name="1g.20gb"))],
         "no whole number"),
        ([entry(colour="green")], "Extra inputs are not permitted"),
    ],
)
def test_the_schema_refuses_tables_mig_geometry_rules_out(models: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(ValidationError) as error:
        CatalogSpec.model_validate({"models": models})
    assert fragment in str(error.value)


def test_a_broken_catalog_file_fails_loading_with_the_field_named() -> None:
    text = mig.catalog_text().replace("name: 7g.80gb, memorySlices: 8", "name: 7g.80gb, memorySlices: 7", 1)
    with pytest.raises(mig.CatalogError, match=r"7g.80gb.*7/8 of 80 GB is 70 GB, not 80"):
        mig.load_catalog(text)


# ------------------------------------------------------------------------------------------------ extension


def test_a_policy_entry_adds_a_model_or_replaces_one_and_takes_its_products() -> None:
    spec = CatalogSpec.model_validate({"models": [
        entry(),
        entry(name="H100-80GB", products=["NVIDIA-H100-80GB-HBM3"], profiles=profile_with()),
        entry(name="B300-BIS", products=["NVIDIA-B300-SXM6-AC"]),
    ]})
    catalog = mig.catalog_for(spec)
    assert catalog is mig.catalog_for(spec), "a policy's catalog is built once"
    assert catalog.model_for_product("NVIDIA-Next") is not None and catalog.knows("3g.40gb")
    h100 = catalog.model_named("H100-80GB")
    assert h100 is not None and h100.profile_names == ("3g.40gb",)
    assert catalog.model_for_product("NVIDIA-H100-PCIe") is None, "the replaced entry's other labels went with it"
    b300 = catalog.model_for_product("NVIDIA-B300-SXM6-AC")
    assert b300 is not None and b300.name == "B300-BIS"
    assert len(catalog.models) == len(mig.CATALOG) + 2
    assert mig.BUILTIN.model_named("H100-80GB") != h100, "the shipped catalog is untouched"


def test_no_additions_leave_the_shipped_catalog_itself() -> None:
    assert mig.catalog_for(None) is mig.BUILTIN
    assert mig.catalog_for(CatalogSpec()) is mig.BUILTIN
    assert MigCatalog.of(mig.CATALOG) == mig.BUILTIN

"""The MIG catalog: profile tables per GPU model, keyed the way GPU Feature Discovery labels nodes."""

from __future__ import annotations

import pytest

from gpuguard.policy import mig


@pytest.mark.parametrize(
    ("label", "model"),
    [
        ("NVIDIA-A100-SXM4-40GB", "A100-40GB"),
        ("A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA-A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA-A100-80GB-PCIe", "A100-80GB"),
        ("NVIDIA-H100-80GB-HBM3", "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3-SHARED", "H100-80GB"),
        ("NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", "H100-80GB"),
        ("NVIDIA-H100-NVL-MIG-1g.12gb", "H100-NVL"),
        ("NVIDIA-H200", "H200-141GB"),
        ("NVIDIA-A30", "A30"),
    ],
)
def test_product_labels_find_their_model_whatever_suffix_gfd_added(label: str, model: str) -> None:
    found = mig.model_for_product(label)
    assert found is not None and found.name == model


@pytest.mark.parametrize("label", ["Tesla-T4", "NVIDIA-L4", "NVIDIA-A10G", ""])
def test_gpus_without_mig_are_not_in_the_catalog(label: str) -> None:
    assert mig.model_for_product(label) is None


@pytest.mark.parametrize(
    ("model", "profile", "memory_slices", "compute_slices", "max_count", "starts"),
    [
        ("A100-40GB", "1g.5gb", 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        ("A100-40GB", "1g.10gb", 2, 1, 4, (0, 2, 4, 6)),
        ("A100-40GB", "3g.20gb", 4, 3, 2, (0, 4)),
        ("A100-80GB", "2g.20gb", 2, 2, 3, (0, 2, 4)),
        ("H100-80GB", "1g.10gb+me", 1, 1, 1, (0, 1, 2, 3, 4, 5, 6)),
        ("H100-80GB", "4g.40gb", 4, 4, 1, (0,)),
        ("H100-80GB", "7g.80gb", 8, 7, 1, (0,)),
        ("H100-NVL", "3g.47gb", 4, 3, 2, (0, 4)),
        ("H200-141GB", "1g.18gb", 1, 1, 7, (0, 1, 2, 3, 4, 5, 6)),
        ("H200-141GB", "7g.141gb", 8, 7, 1, (0,)),
        ("A30", "2g.12gb", 2, 2, 2, (0, 2)),
        ("A30", "4g.24gb", 4, 4, 1, (0,)),
    ],
)
def test_profile_tables_follow_the_mig_user_guide(
    model: str, profile: str, memory_slices: int, compute_slices: int, max_count: int, starts: tuple[int, ...]
) -> None:
    found = mig.model_named(model)
    assert found is not None
    entry = found.profile(profile)
    assert entry is not None
    assert (entry.memory_slices, entry.compute_slices, entry.max_count, entry.starts) == (
        memory_slices, compute_slices, max_count, starts
    )


@pytest.mark.parametrize("model", mig.CATALOG, ids=lambda m: m.name)
def test_every_placement_fits_on_the_gpu_and_is_aligned(model: mig.GpuModel) -> None:
    for profile in model.profiles:
        assert profile.compute_slices <= model.compute_slices
        for start in profile.starts:
            assert start + profile.memory_slices <= model.memory_slices
            assert start % min(profile.memory_slices, 4) == 0 or profile.memory_slices == 1


def test_resource_names_use_dots_for_media_extensions_and_round_trip() -> None:
    assert mig.mig_resource_name("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"
    for profile in mig.all_profile_names():
        assert mig.profile_from_resource(mig.mig_resource_name(profile)) == profile
    assert mig.profile_from_resource("nvidia.com/gpu") is None


def test_the_resource_list_for_managed_resources_has_every_profile_once() -> None:
    names = mig.all_mig_resource_names()
    assert len(names) == len(set(names))
    assert "nvidia.com/mig-1g.10gb" in names and "nvidia.com/mig-7g.141gb" in names
    assert not [n for n in names if "*" in n]


def test_product_labels_are_derived_from_nvml_names_as_gfd_does() -> None:
    assert mig.product_label_from_name("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert mig.product_label_from_name("NVIDIA A100-SXM4-40GB") == "NVIDIA-A100-SXM4-40GB"
    assert mig.product_label_from_name("Tesla T4") == "Tesla-T4"

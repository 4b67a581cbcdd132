"""MIG profile names derived from NVML's numbers match the names the NVIDIA device plugin gives the resources."""

from __future__ import annotations

import pytest

from gpuguard.policy import mig
from gpuguard.policy.catalog import GpuModel, MigProfile
from gpuguard.policy.mig import model_named
from node_agent.mig_naming import PROFILE_SUFFIXES, memory_gb, profile_name

# (GPU memory as NVML reports it, GPU-instance memory as NVML reports it, compute slices, NVML profile enum) -> name.
# Instance sizes are the `nvidia-smi mig -lgip` figures (NVIDIA's MIG user guide, supported profiles).
CASES = [
    (81559, 9984, 1, 0, "1g.10gb"),  # H100 80GB HBM3
    (81559, 9984, 1, 7, "1g.10gb+me"),  # _1_SLICE_REV1
    (81559, 20096, 1, 9, "1g.20gb"),  # _1_SLICE_REV2: double memory
    (81559, 20096, 2, 1, "2g.20gb"),
    (81559, 40448, 3, 2, "3g.40gb"),
    (81559, 40448, 4, 3, "4g.40gb"),
    (81559, 81152, 7, 4, "7g.80gb"),
    (40960, 4864, 1, 0, "1g.5gb"),  # A100-SXM4-40GB
    (40960, 19968, 3, 2, "3g.20gb"),
    (81920, 9728, 1, 0, "1g.10gb"),  # A100-SXM4-80GB
    # H200, as NVML reports it on a real one (driver 580.159.04): nvmlDeviceGetGpuInstanceProfileInfo's memorySizeMB
    (143771, 16384, 1, 0, "1g.18gb"),
    (143771, 16384, 1, 7, "1g.18gb+me"),
    (143771, 33280, 1, 9, "1g.35gb"),
    (143771, 33280, 2, 1, "2g.35gb"),
    (143771, 71424, 3, 2, "3g.71gb"),  # half of 141 GB is 70.5: rounds up, as Go does
    (143771, 71424, 4, 3, "4g.71gb"),
    (143771, 143360, 7, 4, "7g.141gb"),
    (24576, 5836, 1, 0, "1g.6gb"),  # A30 (4 memory slices, still rounded up to eighths)
    # RTX PRO 6000 Blackwell Server Edition: 97887 MiB, instances of 23.62 / 47.38 / 95.00 GiB (nvidia-smi mig -lgip)
    (97887, 24186, 1, 0, "1g.24gb"),
    (97887, 24186, 1, 7, "1g.24gb+me"),
    (97887, 24186, 1, 10, "1g.24gb+gfx"),  # _1_SLICE_GFX
    (97887, 24186, 1, 13, "1g.24gb-me"),  # _1_SLICE_NO_ME
    (97887, 24186, 1, 15, "1g.24gb+me.all"),  # _1_SLICE_ALL_ME
    (97887, 48517, 2, 16, "2g.48gb+me.all"),
    (97887, 48517, 2, 14, "2g.48gb-me"),
    (97887, 97280, 4, 12, "4g.96gb+gfx"),  # _4_SLICE_GFX
    (184320, 23040, 1, 0, "1g.23gb"),  # B200 (NVIDIA's NVML mock figures): 22.5 GB rounds up
    (184320, 92160, 3, 2, "3g.90gb"),
    (284672, 35584, 1, 0, "1g.35gb"),  # GB300 (NVML mock): a 1-slot profile, unlike H200's 1g.35gb
    (284672, 71168, 2, 1, "2g.70gb"),
]


@pytest.mark.parametrize(("gpu_mib", "instance_mib", "slices", "enum", "expected"), CASES)
def test_profile_names_match_the_device_plugin(
    gpu_mib: int, instance_mib: int, slices: int, enum: int, expected: str
) -> None:
    assert profile_name(slices=slices, instance_mib=instance_mib, gpu_mib=gpu_mib, profile_enum=enum) == expected


def test_every_h100_profile_named_from_nvml_is_in_the_catalog() -> None:
    catalog = model_named("H100-80GB")
    assert catalog is not None
    names = {profile_name(slices=s, instance_mib=m, gpu_mib=g, profile_enum=e) for g, m, s, e, _ in CASES[:7]}
    assert names <= set(catalog.profile_names)


def test_memory_is_rounded_up_to_the_next_eighth() -> None:
    assert memory_gb(9984, 81559) == 10  # 12.2 % of the GPU -> 1/8 of 80 GB
    assert memory_gb(10300, 81559) == 20  # just over an eighth -> 2/8


ENUM_FOR_SUFFIX = {suffix: enum for enum, suffix in sorted(PROFILE_SUFFIXES.items(), reverse=True)}


def catalogued() -> list[tuple[GpuModel, MigProfile]]:
    return [(model, profile) for model in mig.CATALOG for profile in model.profiles]


@pytest.mark.parametrize(("model", "profile"), catalogued(), ids=[f"{m.name}-{p.name}" for m, p in catalogued()])
def test_every_catalogued_profile_is_the_name_the_device_plugin_gives_an_instance_of_its_size(
    model: GpuModel, profile: MigProfile
) -> None:
    """Instances are a little smaller than their share (the driver reserves some memory), as on real GPUs."""
    gpu_mib = model.memory_gb * 1024 - 400
    instance_mib = int(gpu_mib * profile.memory_slices / model.memory_slices * 0.98)
    suffix = profile.name[len(profile.name.split("+")[0].split("-")[0]):]
    named = profile_name(slices=profile.compute_slices, instance_mib=instance_mib, gpu_mib=gpu_mib,
                         profile_enum=ENUM_FOR_SUFFIX.get(suffix))
    assert named == profile.name

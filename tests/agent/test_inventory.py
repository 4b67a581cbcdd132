"""The inventory annotation built from a snapshot, and when it is worth a patch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gpuguard.contracts.node_inventory import NodeInventory, encode_inventory, parse_inventory
from node_agent.backend import GpuReading, MigReading, Snapshot
from node_agent.inventory import build_inventory, needs_publishing, published, round_to_step, same_content

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
MIG = MigReading(gpu_instance_id=2, profile="3g.40gb", start=4, size=4, uuid="MIG-1", busy=True,
                 memory_total_mib=40448, memory_used_mib=100)


def gpu(**fields: object) -> GpuReading:
    values: dict[str, object] = {"index": 0, "uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3",
                                 "memory_total_mib": 81559, "memory_used_mib": 1000, "util_percent": 42.0}
    values.update(fields)
    return GpuReading(**values)  # type: ignore[arg-type]


def inventory(*gpus: GpuReading, at: datetime = NOW) -> NodeInventory:
    return build_inventory(Snapshot(driver="550.54.15", gpus=gpus), now=at)


@pytest.mark.parametrize(("value", "step", "expected"), [
    (0, 5, 0), (2.4, 5, 0), (2.5, 5, 5), (42, 5, 40), (47.5, 5, 50), (99, 5, 100), (100, 5, 100),
    (1000, 256, 1024), (127, 256, 0), (128, 256, 256), (61440, 256, 61440),
])
def test_values_are_rounded_to_their_step(value: float, step: int, expected: int) -> None:
    assert round_to_step(value, step) == expected


def test_the_annotation_follows_the_v1_contract() -> None:
    built = inventory(gpu(), gpu(index=1, uuid="GPU-2", name="Tesla T4", util_percent=None, memory_used_mib=None))
    assert parse_inventory(encode_inventory(built)) == built
    first, second = built.gpus
    assert (first.product, first.memory_mib, first.util_percent, first.memory_used_mib) == (
        "NVIDIA-H100-80GB-HBM3", 81559, 40, 1024)
    assert (second.product, second.util_percent, second.memory_used_mib) == ("Tesla-T4", None, None)


def test_a_mig_gpu_has_null_utilization_even_if_a_number_was_read() -> None:
    built = inventory(gpu(mig_enabled=True, util_percent=30.0, mig_devices=(MIG,)))
    entry = built.gpus[0]
    assert entry.util_percent is None
    assert entry.mig.enabled
    assert [(d.profile, d.start, d.size, d.uuid, d.busy) for d in entry.mig.devices] == [
        ("3g.40gb", 4, 4, "MIG-1", True)]


@pytest.mark.parametrize(("before", "after", "patch"), [
    (gpu(util_percent=41.0), gpu(util_percent=42.0), False),  # both round to 40
    (gpu(util_percent=41.0), gpu(util_percent=44.0), False),  # rounds to 45, but within a step of the 40 shown
    (gpu(util_percent=41.0), gpu(util_percent=46.0), True),  # 40 -> 45
    (gpu(memory_used_mib=1000), gpu(memory_used_mib=1100), False),  # both round to 1024
    (gpu(memory_used_mib=1000), gpu(memory_used_mib=9000), True),
    (gpu(mig_enabled=True, mig_devices=(MIG,)), gpu(mig_enabled=True,
                                                    mig_devices=(MigReading(2, "3g.40gb", 4, 4, "MIG-1", False),)), True),
])
def test_only_a_change_beyond_rounding_is_published(before: GpuReading, after: GpuReading, patch: bool) -> None:
    current = inventory(before)
    new = build_inventory(Snapshot(driver="550.54.15", gpus=(after,)), now=NOW + timedelta(seconds=15), previous=current)
    assert needs_publishing(current, new, refresh_after=60) is patch


def test_a_reading_hovering_at_a_rounding_boundary_does_not_flap() -> None:
    shown = inventory(gpu(util_percent=42.0))
    for reading in (43.0, 42.0, 44.0, 41.0, 43.5):
        new = build_inventory(Snapshot(gpus=(gpu(util_percent=reading),)), now=NOW, previous=shown)
        assert new.gpus[0].util_percent == 40
        shown = new
    moved = build_inventory(Snapshot(gpus=(gpu(util_percent=45.0),)), now=NOW, previous=shown)
    assert moved.gpus[0].util_percent == 45


def test_an_unchanged_annotation_is_refreshed_before_readers_call_it_stale() -> None:
    current = inventory(gpu())
    assert not needs_publishing(current, inventory(gpu(), at=NOW + timedelta(seconds=59)), refresh_after=60)
    assert needs_publishing(current, inventory(gpu(), at=NOW + timedelta(seconds=60)), refresh_after=60)
    assert not needs_publishing(current, inventory(gpu(), at=NOW + timedelta(hours=1)), refresh_after=0)


def test_a_missing_or_unreadable_annotation_is_replaced() -> None:
    assert published(None) is None
    assert published('{"v": 2}') is None
    assert needs_publishing(None, inventory(gpu()), refresh_after=60)
    stored = encode_inventory(inventory(gpu()))
    assert same_content(published(stored), inventory(gpu(), at=NOW + timedelta(seconds=5)))


def test_a_mig_devices_gpm_activity_is_published_in_five_percent_steps() -> None:
    from node_agent.backend import Activity

    measured = MigReading(gpu_instance_id=2, profile="3g.40gb", start=4, size=4, uuid="MIG-1", busy=True,
                          activity=Activity(graphics=0.634, sm=0.5))
    unmeasured = MigReading(gpu_instance_id=3, profile="1g.10gb", start=0, size=1, uuid="MIG-2", busy=False)
    built = inventory(gpu(mig_enabled=True, util_percent=None, mig_devices=(measured, unmeasured)))
    first, second = built.gpus[0].mig.devices
    assert (first.util_percent, second.util_percent) == (65, None)
    text = encode_inventory(built)
    assert text.count("utilPercent") == 2  # the GPU's null, and the measured device: an unmeasured one has none
    assert parse_inventory(text) == built
    again = build_inventory(Snapshot(driver="550.54.15", gpus=(gpu(mig_enabled=True, util_percent=None, mig_devices=(
        MigReading(2, "3g.40gb", 4, 4, "MIG-1", True, activity=Activity(graphics=0.68)),)),)), now=NOW,
        previous=built)
    assert again.gpus[0].mig.devices[0].util_percent == 65  # within a step of what is shown: no flapping


def test_an_annotation_written_before_mig_activity_existed_still_parses() -> None:
    old = ('{"v":1,"ts":"2026-05-01T12:00:00Z","driver":"550.54.15","gpus":[{"index":0,"uuid":"GPU-1",'
           '"product":"NVIDIA-H100-80GB-HBM3","memoryMiB":81559,"utilPercent":null,"memoryUsedMiB":1024,'
           '"mig":{"enabled":true,"devices":[{"profile":"3g.40gb","start":4,"size":4,"uuid":"MIG-1","busy":true}]}}]}')
    parsed = parse_inventory(old)
    assert parsed.gpus[0].mig.devices[0].util_percent is None
    assert encode_inventory(parsed) == old  # and is written back byte for byte

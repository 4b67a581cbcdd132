"""The Prometheus collector: DCGM names and labels, fresh families per scrape, failures cost only their samples."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import pytest

from node_agent.attribution import Allocation
from node_agent.backend import Activity, GpuReading, MigReading, ReadError, Snapshot
from node_agent.collector import FIELDS, GpuCollector
from node_agent.metrics import AgentMetrics

DCGM_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}
WHOLE = GpuReading(index=0, uuid="GPU-0", name="NVIDIA A100-SXM4-80GB", pci_bus_id="00000000:07:00.0",
                   memory_total_mib=81920, memory_used_mib=1024,
                   util_percent=37.0, memory_util_percent=12.0, temperature_c=51.0, power_w=201.5,
                   power_limit_w=400.0, sm_clock_mhz=1410.0, memory_clock_mhz=1593.0, energy_mj=5e6,
                   ecc_corrected_volatile=1, ecc_uncorrected_volatile=0, ecc_corrected_aggregate=4,
                   ecc_uncorrected_aggregate=0)
MIG = GpuReading(index=1, uuid="GPU-1", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:19:00.0",
                 memory_total_mib=81559, memory_used_mib=3000, temperature_c=40.0, mig_enabled=True, mig_devices=(
                     MigReading(2, "3g.40gb", 4, 4, "MIG-a", True, memory_total_mib=40448, memory_used_mib=2048,
                                activity=Activity(graphics=0.625, sm=0.5)),
                     MigReading(9, "1g.10gb", 0, 1, "MIG-b", False, memory_total_mib=9984, memory_used_mib=0,
                                activity=Activity(graphics=0.0, sm=None))))
HOPPER = GpuReading(index=2, uuid="GPU-2", name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:2A:00.0",
                    util_percent=40.0, temperature_c=44.0, activity=Activity(graphics=0.375, sm=0.25))


class StubBackend:
    def __init__(self, *snapshots: Snapshot) -> None:
        self.snapshots = list(snapshots)
        self.reads = 0

    @property
    def name(self) -> str:
        return "stub"

    def read(self) -> Snapshot:
        self.reads += 1
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]

    def close(self) -> None:
        pass


class StubPods:
    def __init__(self, *allocations: Allocation) -> None:
        self.held = allocations

    def allocations(self) -> tuple[Allocation, ...]:
        return self.held


def scrape(backend: StubBackend, registry: CollectorRegistry | None = None,
           pods: StubPods | None = None) -> tuple[str, CollectorRegistry]:
    if registry is None:
        registry = CollectorRegistry()
        registry.register(GpuCollector(backend, hostname="node-a", metrics=AgentMetrics(registry), pods=pods))
    return generate_latest(registry).decode(), registry


def series(exposition: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_the_field_list_is_dcgm_names_once_each() -> None:
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert all(name.startswith(("DCGM_FI_DEV_", "DCGM_FI_PROF_")) for name in names)
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK"} <= set(names)


def test_whole_gpu_samples_carry_dcgm_labels_and_values() -> None:
    text, _ = scrape(StubBackend(Snapshot(driver="550.54.15", gpus=(WHOLE,))))
    found = series(text)
    [(labels, util)] = found["DCGM_FI_DEV_GPU_UTIL"]
    assert set(labels) == DCGM_LABELS
    assert labels == {"gpu": "0", "UUID": "GPU-0", "pci_bus_id": "00000000:07:00.0", "device": "nvidia0",
                      "modelName": "NVIDIA A100-SXM4-80GB", "Hostname": "node-a",
                      "DCGM_FI_DRIVER_VERSION": "550.54.15"}
    assert util == 37.0
    assert found["DCGM_FI_DEV_FB_FREE"][0][1] == 81920 - 1024
    assert found["DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"][0][1] == 4


def test_dcgm_counters_keep_their_exact_names() -> None:
    text, _ = scrape(StubBackend(Snapshot(gpus=(WHOLE,))))
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{" in text
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" not in text
    assert "# TYPE DCGM_FI_DEV_ECC_SBE_VOL_TOTAL untyped" in text


def test_a_mig_gpu_reports_memory_per_instance_and_no_utilization() -> None:
    text, _ = scrape(StubBackend(Snapshot(gpus=(MIG,))))
    found = series(text)
    assert "DCGM_FI_DEV_GPU_UTIL" not in found
    used = {(labels["GPU_I_PROFILE"], labels["GPU_I_ID"]): value for labels, value in found["DCGM_FI_DEV_FB_USED"]}
    assert used == {("3g.40gb", "2"): 2048, ("1g.10gb", "9"): 0}
    assert all(labels["UUID"] == "GPU-1" and labels["gpu"] == "1" for labels, _ in found["DCGM_FI_DEV_FB_USED"])
    [(temperature_labels, _)] = found["DCGM_FI_DEV_GPU_TEMP"]
    assert "GPU_I_ID" not in temperature_labels


def test_a_missing_field_costs_only_its_own_sample() -> None:
    no_power = GpuReading(index=2, uuid="GPU-2", name="Tesla T4", memory_total_mib=15360, memory_used_mib=0,
                          util_percent=5.0, temperature_c=40.0)
    found = series(scrape(StubBackend(Snapshot(gpus=(WHOLE, no_power))))[0])
    assert [labels["gpu"] for labels, _ in found["DCGM_FI_DEV_POWER_USAGE"]] == ["0"]
    assert [labels["gpu"] for labels, _ in found["DCGM_FI_DEV_GPU_TEMP"]] == ["0", "2"]


def test_every_scrape_reads_afresh_so_a_vanished_gpu_leaves_no_stale_sample() -> None:
    backend = StubBackend(Snapshot(gpus=(WHOLE, MIG)), Snapshot(gpus=(MIG,)))
    first, registry = scrape(backend)
    second, _ = scrape(backend, registry)
    assert backend.reads == 2
    assert {labels["gpu"] for labels, _ in series(first)["DCGM_FI_DEV_GPU_TEMP"]} == {"0", "1"}
    assert {labels["gpu"] for labels, _ in series(second)["DCGM_FI_DEV_GPU_TEMP"]} == {"1"}
    assert series(second)["gpuguard_agent_gpus"][0][1] == 1


def test_registering_the_collector_does_not_read_the_gpus() -> None:
    backend = StubBackend(Snapshot())
    registry = CollectorRegistry()
    registry.register(GpuCollector(backend, hostname="n", metrics=AgentMetrics(registry)))
    assert backend.reads == 0


def test_health_metrics_describe_the_scrape() -> None:
    errors = (ReadError("nvmlDeviceGetPowerUsage", "NotSupported", 2), ReadError("nvmlDeviceGetCount", "Unknown"))
    clock = iter([10.0, 10.004])
    backend = StubBackend(Snapshot(driver="550.54.15", gpus=(WHOLE, MIG), errors=errors))
    registry = CollectorRegistry()
    registry.register(GpuCollector(backend, hostname="n", metrics=AgentMetrics(registry), clock=lambda: next(clock)))
    found = series(generate_latest(registry).decode())
    assert abs(found["gpuguard_agent_scrape_duration_seconds"][0][1] - 0.004) < 1e-9
    assert found["gpuguard_agent_gpus"][0][1] == 2
    assert found["gpuguard_agent_mig_devices"][0][1] == 2
    assert found["gpuguard_agent_backend_info"] == [({"backend": "stub", "driver": "550.54.15"}, 1.0)]
    errors_counted = {(labels["function"], labels["error"]): v for labels, v in found["gpuguard_agent_nvml_errors_total"]}
    assert errors_counted == {("nvmlDeviceGetPowerUsage", "NotSupported"): 1, ("nvmlDeviceGetCount", "Unknown"): 1}


def test_openmetrics_scrapers_get_the_same_names() -> None:
    _, registry = scrape(StubBackend(Snapshot(gpus=(WHOLE, MIG))))
    families = {f.name for f in parse_openmetrics(generate_openmetrics(registry).decode())}
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"} <= families


def test_gpm_activity_is_exported_per_instance_and_per_whole_gpu_as_dcgm_ratios() -> None:
    found = series(scrape(StubBackend(Snapshot(gpus=(WHOLE, MIG, HOPPER))))[0])
    engine = {(labels["gpu"], labels.get("GPU_I_ID")): v for labels, v in found["DCGM_FI_PROF_GR_ENGINE_ACTIVE"]}
    assert engine == {("1", "2"): 0.625, ("1", "9"): 0.0, ("2", None): 0.375}  # the A100 has no GPM: no sample
    sm = {(labels["gpu"], labels.get("GPU_I_ID")): v for labels, v in found["DCGM_FI_PROF_SM_ACTIVE"]}
    assert sm == {("1", "2"): 0.5, ("2", None): 0.25}
    [(mig_labels, _)] = [s for s in found["DCGM_FI_PROF_SM_ACTIVE"] if s[0]["gpu"] == "1"]
    assert mig_labels["GPU_I_PROFILE"] == "3g.40gb" and mig_labels["UUID"] == "GPU-1"


def test_every_device_sample_carries_the_pci_bus_id() -> None:
    found = series(scrape(StubBackend(Snapshot(gpus=(WHOLE, MIG))))[0])
    buses = {labels["pci_bus_id"] for name, samples in found.items() if name.startswith("DCGM_")
             for labels, _ in samples}
    assert buses == {"00000000:07:00.0", "00000000:19:00.0"}


def pod(name: str, device_id: str, resource: str = "nvidia.com/gpu", container: str = "main") -> Allocation:
    return Allocation(name, "team-a", container, resource, device_id)


def test_a_gpu_held_by_a_container_carries_its_pod_namespace_and_container() -> None:
    pods = StubPods(pod("llm-0", "GPU-0", container="kserve-container"))
    found = series(scrape(StubBackend(Snapshot(gpus=(WHOLE, MIG))), pods=pods)[0])
    [(labels, _)] = [s for s in found["DCGM_FI_DEV_GPU_TEMP"] if s[0]["gpu"] == "0"]
    assert (labels["pod"], labels["namespace"], labels["container"]) == ("llm-0", "team-a", "kserve-container")
    assert "vgpu" not in labels
    assert all("pod" not in labels for labels, _ in found["DCGM_FI_DEV_GPU_TEMP"] if labels["gpu"] == "1")


def test_mig_instances_are_attributed_one_by_one_and_their_gpu_to_nobody() -> None:
    pods = StubPods(pod("small", "MIG-b", "nvidia.com/mig-1g.10gb"), pod("big", "MIG-a", "nvidia.com/mig-3g.40gb"))
    found = series(scrape(StubBackend(Snapshot(gpus=(MIG,))), pods=pods)[0])
    owners = {labels["GPU_I_ID"]: labels["pod"] for labels, _ in found["DCGM_FI_DEV_FB_USED"]}
    assert owners == {"2": "big", "9": "small"}
    [(gpu_labels, _)] = found["DCGM_FI_DEV_GPU_TEMP"]
    assert "pod" not in gpu_labels


def test_a_time_sliced_gpu_repeats_its_samples_for_each_sharing_container() -> None:
    pods = StubPods(pod("a", "GPU-0::0", "nvidia.com/gpu.shared"), pod("b", "GPU-0::3", "nvidia.com/gpu.shared"))
    found = series(scrape(StubBackend(Snapshot(gpus=(WHOLE,))), pods=pods)[0])
    shares = sorted((labels["pod"], labels["vgpu"], v) for labels, v in found["DCGM_FI_DEV_GPU_UTIL"])
    assert shares == [("a", "0", 37.0), ("b", "3", 37.0)]


@pytest.mark.parametrize("device_id", ["GPU-9", "MIG-zzz", "nvidia7"])
def test_device_ids_of_other_nodes_or_vendors_attribute_nothing(device_id: str) -> None:
    pods = StubPods(pod("x", device_id), Allocation("y", "n", "c", "example.com/gpu", "GPU-0"))
    text, _ = scrape(StubBackend(Snapshot(gpus=(WHOLE, MIG))), pods=pods)
    assert 'pod="' not in text

"""The NVML backend through the real pynvml, against the fake libnvidia-ml.so.1 driven by tests/data/agent.

Each scenario runs in a process of its own (pynvml loads the library through LD_LIBRARY_PATH): the checks below
compare what the agent exported, annotated and counted with the configuration the fake library served.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node_agent.nvml import error_name, unavailable_message

from .conftest import ROOT, agent_env, load_agent_data

NODE = load_agent_data("nvml-node.json")
H100, A100, T4 = 0, 1, 2


def probe_closing(
    steps: list[dict[str, Any]], *, fake_nvml: Path, tmp_path: Path, gpm_min_interval: float = 0.0
) -> tuple[list[dict[str, Any]], int]:
    """The readings, and the GPM samples the library still holds once the backend is closed."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"hostname": "gpu-node-1", "steps": steps, "gpmMinInterval": gpm_min_interval}))
    result = subprocess.run(
        [sys.executable, "-m", "tests.agent.nvml_probe", str(scenario)], cwd=ROOT, capture_output=True, text=True,
        env=agent_env(nvml_dir=fake_nvml, nvml_config=tmp_path / "nvml.json"), timeout=60,
    )
    assert result.returncode == 0, result.stderr
    readings: list[dict[str, Any]] = json.loads(result.stdout)
    return readings[:-1], int(readings[-1]["gpmSamples"])


def probe(steps: list[dict[str, Any]], *, fake_nvml: Path, tmp_path: Path) -> list[dict[str, Any]]:
    return probe_closing(steps, fake_nvml=fake_nvml, tmp_path=tmp_path)[0]


def with_change(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(NODE)
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return config


@pytest.fixture(scope="module")
def steps(fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Read 1 and 2: the node as configured. Read 3: the A100 fell off the bus. Read 4: it is back, and the T4
    reports GpuIsLost half-way through its read."""
    scenario = [NODE, NODE, with_change(("gpus", A100, "lost"), True),
                with_change(("gpus", T4, "fail", "nvmlDeviceGetTemperature"), "GPU_IS_LOST")]
    return probe(scenario, fake_nvml=fake_nvml, tmp_path=tmp_path_factory.mktemp("probe"))


def samples(exposition: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in text_string_to_metric_families(exposition)
            for s in family.samples if s.name == name]


def value(exposition: str, name: str, **labels: str) -> float | None:
    found = [v for sample_labels, v in samples(exposition, name) if labels.items() <= sample_labels.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def test_every_gpu_is_read_with_its_identity(steps: list[dict[str, Any]]) -> None:
    gpus = steps[0]["snapshot"]["gpus"]
    assert [(g["index"], g["uuid"], g["name"]) for g in gpus] == [
        (i, c["uuid"], c["name"]) for i, c in enumerate(NODE["gpus"])
    ]
    assert steps[0]["snapshot"]["driver"] == "550.54.15"


def test_mig_devices_are_named_and_placed_as_the_device_plugin_sees_them(steps: list[dict[str, Any]]) -> None:
    devices = steps[0]["inventory"]["gpus"][H100]["mig"]
    assert devices["enabled"] is True
    assert [(d["profile"], d["start"], d["size"], d["busy"]) for d in devices["devices"]] == [
        ("1g.10gb+me", 0, 1, False),  # profile id 20: the media-extension 1g instance
        ("1g.20gb", 2, 2, True),  # profile id 15: one compute slice, two memory slices
        ("3g.40gb", 4, 4, True),
    ]
    assert {d["uuid"] for d in devices["devices"]} == {d["uuid"] for d in NODE["gpus"][H100]["migDevices"]}


def test_a_mig_enabled_gpu_reports_no_utilization_anywhere(steps: list[dict[str, Any]]) -> None:
    reading = steps[0]
    assert reading["inventory"]["gpus"][H100]["utilPercent"] is None
    assert reading["snapshot"]["gpus"][H100]["util_percent"] is None
    util = samples(reading["metrics"], "DCGM_FI_DEV_GPU_UTIL")
    assert {labels["gpu"] for labels, _ in util} == {"1", "2"}
    assert not any("GPU_I_ID" in labels for labels, _ in util)


@pytest.mark.parametrize(("metric", "gpu", "expected"), [
    ("DCGM_FI_DEV_GPU_UTIL", A100, 47),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", A100, 30),
    ("DCGM_FI_DEV_FB_USED", A100, 40960),
    ("DCGM_FI_DEV_FB_FREE", A100, 81920 - 40960),
    ("DCGM_FI_DEV_GPU_TEMP", H100, 45),
    ("DCGM_FI_DEV_POWER_USAGE", H100, 250.25),
    ("DCGM_FI_DEV_ENFORCED_POWER_LIMIT", A100, 400),
    ("DCGM_FI_DEV_SM_CLOCK", T4, 1590),
    ("DCGM_FI_DEV_MEM_CLOCK", T4, 5000),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", A100, 987654321),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", A100, 2),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", A100, 1),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", H100, 3),
])
def test_metrics_carry_what_nvml_reported(steps: list[dict[str, Any]], metric: str, gpu: int, expected: float) -> None:
    labels = {"gpu": str(gpu), "UUID": NODE["gpus"][gpu]["uuid"], "modelName": NODE["gpus"][gpu]["name"],
              "Hostname": "gpu-node-1", "device": f"nvidia{gpu}"}
    assert value(steps[0]["metrics"], metric, **labels) == pytest.approx(expected)


def test_framebuffer_of_a_mig_gpu_is_reported_per_instance(steps: list[dict[str, Any]]) -> None:
    used = samples(steps[0]["metrics"], "DCGM_FI_DEV_FB_USED")
    h100 = {(labels.get("GPU_I_PROFILE"), labels.get("GPU_I_ID")): v for labels, v in used if labels["gpu"] == "0"}
    assert h100 == {("1g.10gb+me", "13"): 0, ("1g.20gb", "5"): 600, ("3g.40gb", "2"): 2048}
    free = value(steps[0]["metrics"], "DCGM_FI_DEV_FB_FREE", gpu="0", GPU_I_ID="2")
    assert free == 40448 - 2048


@pytest.mark.parametrize(("function", "error", "missing", "present"), [
    ("nvmlDeviceGetPowerUsage", "NotSupported", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_ENFORCED_POWER_LIMIT"),
    ("nvmlDeviceGetTotalEccErrors", "FunctionNotFound", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_GPU_TEMP"),
])
def test_a_failing_function_drops_only_its_field(
    steps: list[dict[str, Any]], function: str, error: str, missing: str, present: str
) -> None:
    exposition = steps[0]["metrics"]
    assert value(exposition, missing, gpu=str(T4)) is None
    assert value(exposition, present, gpu=str(T4)) is not None
    assert value(exposition, missing, gpu=str(A100)) is not None
    assert steps[0]["errors"][f"{function}/{error}"] >= 1
    assert steps[0]["inventory"]["gpus"][T4]["utilPercent"] == 20


def test_a_permanent_failure_is_counted_once_and_not_asked_again(steps: list[dict[str, Any]]) -> None:
    first, second = steps[0]["errors"], steps[1]["errors"]
    assert first["nvmlDeviceGetPowerUsage/NotSupported"] == 1
    assert first["nvmlDeviceGetTotalEccErrors/FunctionNotFound"] == 4  # corrected/uncorrected x volatile/aggregate
    assert second == first


def test_a_vanished_gpu_leaves_metrics_and_inventory_while_the_others_stay(steps: list[dict[str, Any]]) -> None:
    lost = steps[2]
    assert [g["uuid"] for g in lost["inventory"]["gpus"]] == [NODE["gpus"][H100]["uuid"], NODE["gpus"][T4]["uuid"]]
    assert {labels["gpu"] for labels, _ in samples(lost["metrics"], "DCGM_FI_DEV_GPU_TEMP")} == {"0", "2"}
    assert lost["errors"]["nvmlDeviceGetHandleByIndex/GpuIsLost"] == 1
    assert value(lost["metrics"], "gpuguard_agent_gpus") == 2


def test_a_gpu_lost_half_way_through_its_read_is_not_half_reported(steps: list[dict[str, Any]]) -> None:
    reading = steps[3]
    assert [g["index"] for g in reading["snapshot"]["gpus"]] == [H100, A100]
    assert value(reading["metrics"], "DCGM_FI_DEV_SM_CLOCK", gpu=str(T4)) is None
    assert reading["errors"]["nvmlDeviceGetTemperature/GpuIsLost"] == 1


def test_eight_mig_gpus_are_all_exported(fake_nvml: Path, tmp_path: Path) -> None:
    node = load_agent_data("nvml-8xh100-mig.json")
    _, reading = probe([node, node], fake_nvml=fake_nvml, tmp_path=tmp_path)
    assert len(samples(reading["metrics"], "DCGM_FI_PROF_GR_ENGINE_ACTIVE")) == 8 * 7
    used = samples(reading["metrics"], "DCGM_FI_DEV_FB_USED")
    assert len(used) == 8 * 7
    assert {labels["GPU_I_PROFILE"] for labels, _ in used} == {"1g.10gb"}
    assert all(len(g["mig"]["devices"]) == 7 for g in reading["inventory"]["gpus"])
    assert samples(reading["metrics"], "DCGM_FI_DEV_GPU_UTIL") == []


@pytest.mark.parametrize(("code", "expected"), [
    (12, "libnvidia-ml.so.1 was not found"),  # NVML_ERROR_LIBRARY_NOT_FOUND: no driver on this machine
    (9, "DriverNotLoaded"),  # NVML_ERROR_DRIVER_NOT_LOADED
])
def test_nvml_unavailable_says_how_to_fix_it(code: int, expected: str) -> None:
    import pynvml  # only to build the error; the library itself is not loaded

    assert expected in unavailable_message(pynvml.NVMLError(code))
    assert error_name(pynvml.NVMLError(code)) in ("LibraryNotFound", "DriverNotLoaded")


HOPPER = load_agent_data("nvml-hopper-gpm.json")
MIG_H100, WHOLE_H100, NO_GPM = 0, 1, 2


def hopper_with(*changes: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    config = copy.deepcopy(HOPPER)
    for path, new in changes:
        target = config
        for key in path[:-1]:
            target = target[key]
        if new is None:
            del target[path[-1]]
        else:
            target[path[-1]] = new
    return config


@pytest.fixture(scope="module")
def hopper(fake_nvml: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], int]:
    """Read 1: first GPM samples. Read 2: activity since read 1. Read 3: the 3g instance got busier and the 1g at
    GPU-instance 10 was destroyed. Read 4: nvmlGpmMetricsGet fails on the whole node."""
    return probe_closing([
        HOPPER, HOPPER,
        hopper_with((("gpus", MIG_H100, "migDevices", 0, "gpm", "graphicsUtil"), 95.0),
                    (("gpus", MIG_H100, "migDevices", 2), None)),
        hopper_with((("fail",), {"nvmlGpmMetricsGet": "UNKNOWN"})),
    ], fake_nvml=fake_nvml, tmp_path=tmp_path_factory.mktemp("hopper"))


def engine(exposition: str) -> dict[tuple[str, str | None], float]:
    return {(labels["gpu"], labels.get("GPU_I_ID")): v
            for labels, v in samples(exposition, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")}


def test_gpm_needs_two_samples_so_the_first_read_exports_no_activity(hopper: tuple[list[dict[str, Any]], int]) -> None:
    first = hopper[0][0]
    assert engine(first["metrics"]) == {}
    assert all("utilPercent" not in d for d in first["inventory"]["gpus"][MIG_H100]["mig"]["devices"])


def test_gpm_activity_per_gpu_instance_and_per_whole_gpu_through_the_real_pynvml(
    hopper: tuple[list[dict[str, Any]], int]
) -> None:
    second = hopper[0][1]
    assert engine(second["metrics"]) == {("0", "2"): 0.825, ("0", "9"): 0.2, ("0", "10"): 0.0, ("1", None): 0.7325}
    sm = {(labels["gpu"], labels.get("GPU_I_ID")): v
          for labels, v in samples(second["metrics"], "DCGM_FI_PROF_SM_ACTIVE")}
    assert sm == {("0", "2"): 0.61, ("0", "10"): 0.0, ("1", None): 0.555}  # GI 9 measures no SM activity
    [(labels, _)] = [s for s in samples(second["metrics"], "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
                     if s[0].get("GPU_I_ID") == "2"]
    assert (labels["GPU_I_PROFILE"], labels["UUID"], labels["pci_bus_id"]) == (
        "3g.40gb", HOPPER["gpus"][MIG_H100]["uuid"], "00000000:19:00.0")
    devices = {d["uuid"][-1]: d.get("utilPercent") for d in second["inventory"]["gpus"][MIG_H100]["mig"]["devices"]}
    assert devices == {"1": 85, "2": 20, "3": 0}  # 82.5 % in 5 % steps
    assert not any(name.startswith("nvmlGpm") for name in second["errors"])  # the A100 says it has none: no error


def test_gpm_follows_the_activity_and_frees_the_samples_of_destroyed_instances(
    hopper: tuple[list[dict[str, Any]], int]
) -> None:
    readings, left_after_close = hopper
    third = readings[2]
    assert engine(third["metrics"]) == {("0", "2"): 0.95, ("0", "9"): 0.2, ("1", None): 0.7325}
    assert [r["gpmSamples"] for r in readings[:3]] == [8, 8, 6]  # two per sampled device: 3 instances + 1 GPU
    assert left_after_close == 0


def test_a_failing_gpm_call_costs_only_the_activity(hopper: tuple[list[dict[str, Any]], int]) -> None:
    fourth = hopper[0][3]
    assert engine(fourth["metrics"]) == {}
    assert fourth["errors"]["nvmlGpmMetricsGet/Unknown"] == 3
    assert value(fourth["metrics"], "DCGM_FI_DEV_FB_USED", gpu="0", GPU_I_ID="2") == 18000
    assert value(fourth["metrics"], "DCGM_FI_DEV_GPU_UTIL", gpu="1") == 71


def test_every_gpu_sample_carries_nvmls_pci_bus_id(steps: list[dict[str, Any]]) -> None:
    temperature = samples(steps[0]["metrics"], "DCGM_FI_DEV_GPU_TEMP")
    assert {labels["gpu"]: labels["pci_bus_id"] for labels, _ in temperature} == {
        "0": "00000000:19:00.0", "1": "00000000:3B:00.0", "2": "00000000:86:00.0"}


def test_reads_closer_than_the_minimum_interval_reuse_the_last_measurement(fake_nvml: Path, tmp_path: Path) -> None:
    readings, _ = probe_closing([HOPPER] * 3, fake_nvml=fake_nvml, tmp_path=tmp_path, gpm_min_interval=3600)
    assert [engine(r["metrics"]) for r in readings] == [{}, {}, {}]  # no window of milliseconds is ever measured
    assert readings[-1]["gpmSamples"] == 8  # and no sample is taken for it either

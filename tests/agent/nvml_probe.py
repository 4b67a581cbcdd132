"""Run the NVML backend, collector and inventory against the fake libnvidia-ml.so.1, in a process of its own.

`python -m tests.agent.nvml_probe SCENARIO.json` with LD_LIBRARY_PATH pointing at the fake library and
FAKE_NVML_CONFIG at a writable path. The scenario is `{"hostname": ..., "steps": [nvml config, ...]}`: for each step
the config is swapped in (the library re-reads it), the agent's registry is scraped once, and what the agent saw is
written to stdout as JSON: the snapshot, the exposition text, the inventory annotation, the NVML error counts and
the GPM samples the library holds. GPM measures every read (`gpmMinInterval`, default 0 s): steps follow each other
within milliseconds.
A process of its own because pynvml loads the library once, through the dynamic linker's search path.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpuguard.contracts.node_inventory import encode_inventory
from node_agent.backend import Snapshot
from node_agent.collector import GpuCollector
from node_agent.inventory import build_inventory
from node_agent.metrics import AgentMetrics
from node_agent.nvml import NvmlBackend


class Recording:
    """The NVML backend, remembering the snapshot of the last read (the one the scrape used)."""

    def __init__(self, backend: NvmlBackend) -> None:
        self.backend = backend
        self.last = Snapshot()

    @property
    def name(self) -> str:
        return self.backend.name

    def read(self) -> Snapshot:
        self.last = self.backend.read()
        return self.last

    def close(self) -> None:
        self.backend.close()


def swap_in(config: dict[str, Any], path: Path) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps(config))
    os.replace(temporary, path)  # a new inode: the library notices the change


def error_counts(exposition: str) -> dict[str, float]:
    """The NVML error counts of one scrape (collecting the registry again would read the GPUs again)."""
    return {f"{s.labels['function']}/{s.labels['error']}": s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples
            if s.name == "gpuguard_agent_nvml_errors_total"}


def main(scenario_path: str) -> None:
    scenario = json.loads(Path(scenario_path).read_text())
    config_path = Path(os.environ["FAKE_NVML_CONFIG"])
    swap_in(scenario["steps"][0], config_path)
    backend = Recording(NvmlBackend(gpm_min_interval=scenario.get("gpmMinInterval", 0.0)))
    library = ctypes.CDLL("libnvidia-ml.so.1")  # the fake one: what pynvml loaded
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    registry.register(GpuCollector(backend, hostname=scenario["hostname"], metrics=metrics))
    results = []
    for step in scenario["steps"]:
        swap_in(step, config_path)
        exposition = generate_latest(registry).decode()
        inventory = build_inventory(backend.last, now=datetime.now(UTC))
        results.append({
            "snapshot": dataclasses.asdict(backend.last),
            "metrics": exposition,
            "inventory": json.loads(encode_inventory(inventory)),
            "errors": error_counts(exposition),
            "gpmSamples": library.fakeNvmlLiveGpmSamples(),
        })
    backend.close()
    results.append({"gpmSamples": library.fakeNvmlLiveGpmSamples()})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])

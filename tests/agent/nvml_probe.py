"""Run the NVML backend, collector and inventory against the fake libnvidia-ml.so.1, in a process of its own.

`python -m tests.agent.nvml_probe SCENARIO.json` with LD_LIBRARY_PATH pointing at the fake library and
FAKE_NVML_CONFIG at a writable path. The scenario is `{"hostname": ..., "steps": [nvml config, ...]}`: for each step
the config is swapped in (the library re-reads it), the agent's `/metrics` is scraped once, and what the agent saw is
written to stdout as JSON: the snapshot, the exposition text, the inventory annotation, the NVML error counts and
the GPM samples the library holds. GPM measures every read (`gpmMinInterval`, default 0 s): steps follow each other
within milliseconds. With `"podResourcesSocket": PATH` the collector labels devices with the pods the kubelet
there reports, asked once before the first scrape.
A process of its own because pynvml loads the library once, through the dynamic linker's search path.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsgiref.types import WSGIApplication
from wsgiref.util import setup_testing_defaults

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gpuguard.contracts.node_inventory import encode_inventory
from node_agent.backend import Snapshot
from node_agent.collector import GpuCollector
from node_agent.inventory import build_inventory
from node_agent.metrics import AgentMetrics
from node_agent.nvml import NvmlBackend
from node_agent.podresources import PodResourcesClient
from node_agent.serving import create_http_app


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


def scrape(app: WSGIApplication) -> str:
    """`GET /metrics` through the agent's HTTP app, as Prometheus asks for it (without compression)."""
    environ: dict[str, Any] = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], object]:
        statuses.append(status)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    assert statuses == ["200 OK"], statuses
    return body.decode()


def main(scenario_path: str) -> None:
    scenario = json.loads(Path(scenario_path).read_text())
    config_path = Path(os.environ["FAKE_NVML_CONFIG"])
    swap_in(scenario["steps"][0], config_path)
    backend = Recording(NvmlBackend(gpm_min_interval=scenario.get("gpmMinInterval", 0.0)))
    library = ctypes.CDLL("libnvidia-ml.so.1")  # the fake one: what pynvml loaded
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    pods = None
    if "podResourcesSocket" in scenario:  # the kubelet's PodResources API, asked once before the first scrape
        pods = PodResourcesClient(Path(scenario["podResourcesSocket"]), max_age=3600)
        pods.allocations()
    registry.register(GpuCollector(backend, hostname=scenario["hostname"], metrics=metrics, pods=pods))
    app = create_http_app(registry, ready=lambda: True)
    results = []
    for step in scenario["steps"]:
        swap_in(step, config_path)
        exposition = scrape(app)
        inventory = build_inventory(backend.last, now=datetime.now(UTC))
        results.append({
            "snapshot": dataclasses.asdict(backend.last),
            "metrics": exposition,
            "inventory": json.loads(encode_inventory(inventory)),
            "errors": error_counts(exposition),
            "gpmSamples": library.fakeNvmlLiveGpmSamples(),
        })
    backend.close()
    if pods is not None:
        pods.close()
    results.append({"gpmSamples": library.fakeNvmlLiveGpmSamples()})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])

"""The agent's own health metrics, registered on an injected registry (the GPU metrics are in `collector`)."""

from __future__ import annotations

import collections
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

from node_agent.backend import Snapshot


class ErrorTally:
    """Failed backend calls, counted over every read (scrapes and report cycles).

    Exposed by the GPU collector right after its own read, so a scrape already shows the errors it ran into
    (a registered Counter would be collected before the read and show them one scrape late).
    """

    def __init__(self) -> None:
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def record(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._counts.update((e.function, e.error) for e in snapshot.errors)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "gpuguard_agent_nvml_errors",
            "Failed backend calls by NVML function and error; a field that answers NotSupported or "
            "FunctionNotFound is counted once and not asked for again",
            labels=["function", "error"],
        )
        with self._lock:
            for (function, error), count in sorted(self._counts.items()):
                family.add_metric([function, error], count)
        return family


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.nvml_errors = ErrorTally()
        self.api_errors = Counter(
            "gpuguard_agent_api_errors",
            "Kubernetes API calls that failed, by operation (read_node, patch_node, read_configmap, ...)",
            ["operation"], registry=registry,
        )
        self.last_report = Gauge(
            "gpuguard_agent_last_report_timestamp_seconds",
            "Unix time of the last cycle that brought the node annotation and time-slicing up to date",
            registry=registry,
        )
        self.inventory_patches = Counter(
            "gpuguard_agent_inventory_patches", "Patches of the gpuguard.io/gpu-inventory node annotation",
            registry=registry,
        )
        self.time_slicing_changes = Counter(
            "gpuguard_agent_time_slicing_changes",
            "Changes made for time-slicing: ConfigMap entries written, node labels set or removed",
            ["change"], registry=registry,
        )

    def record_read(self, snapshot: Snapshot) -> None:
        self.nvml_errors.record(snapshot)

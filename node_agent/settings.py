"""Agent settings: grouped, typed, documented, passed explicitly (no module-level configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node_agent.podresources import SOCKET

BackendName = Literal["nvml", "fake", "null"]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    node_name: str
    """The Node this agent runs on (the chart sets NODE_NAME from the downward API); also the `Hostname` label."""
    policy_path: Path | None = None
    """None: the embedded default policy."""
    backend: BackendName = "nvml"
    fake_gpus: Path | None = None
    """The fake backend's GPU file (node-annotation schema)."""
    pod_resources_socket: Path | None = SOCKET
    """The kubelet's PodResources socket, for the `pod`, `namespace`, `container` labels; None: no attribution.
    A missing socket is logged once and the labels are left out (the chart mounts the directory read-only)."""
    fallback_to_null: bool = False
    """When NVML cannot start, run with the null backend (zero GPUs) instead of exiting."""
    host: str = "0.0.0.0"
    metrics_port: int = 9401
    """Plain-HTTP /metrics, /healthz, /readyz; 0 disables. 9401: next to dcgm-exporter's 9400, so both can run."""
    interval: float = 15.0
    """Seconds between report cycles (GPU read, annotation, time-slicing); Prometheus' usual scrape interval."""
    kubeconfig: Path | None = None
    in_cluster: bool = False
    cluster_state: Path | None = None
    """A cluster-state file standing in for the API server (demo, dry runs)."""
    once: bool = False
    """Run one cycle, print the inventory, exit."""
    dry_run: bool = False
    """Print every change to the node and the ConfigMap instead of making it."""
    node_refresh: float = 60.0
    """Seconds between reads of the Node (labels for time-slicing, the annotation as stored). Labels change rarely,
    so reading every cycle would only load the API server; a policy change triggers a read at once."""
    backoff_cap: float = 300.0
    """Longest wait, in seconds, between retries after API errors (the first retry waits one interval)."""

    @property
    def has_cluster(self) -> bool:
        return self.kubeconfig is not None or self.in_cluster or self.cluster_state is not None

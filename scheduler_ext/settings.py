"""Extender settings: grouped, typed, documented, passed explicitly (no module-level configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpuguard.web.limits import ConnectionLimits

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Full-Node requests carry every candidate Node: ~16 MB for 5,000 nodes, so 32 MiB leaves room for fat nodes."""

CONNECTIONS = ConnectionLimits(max_connections=32)
"""kube-scheduler, the only caller, makes one extender call at a time, and each may carry a 32 MiB body."""

DEFAULT_PORT = 8888
"""The port the chart's KubeSchedulerConfiguration points `urlPrefix` at (a sidecar reached on localhost)."""


@dataclass(frozen=True, slots=True)
class GcSettings:
    """Python's cyclic garbage collector on the request path.

    A request allocates tens of thousands of short-lived objects (node names, scores); with the default thresholds
    (700, 10, 10) that triggers full collections every few requests, each walking the whole node cache. `tuned`
    raises the thresholds at startup and freezes the loaded state after every full load (`gc.freeze()`: long-lived
    objects are left out of collections). Cyclic garbage is rare here, so collections can be far apart.
    """

    mode: Literal["tuned", "default"] = "tuned"
    thresholds: tuple[int, int, int] = (50_000, 20, 100)


@dataclass(frozen=True, slots=True)
class ExtenderSettings:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    policy_path: Path | None = None
    """None: the embedded default policy."""
    prometheus_url: str | None = None
    """Base URL of the Prometheus HTTP API; None: utilization only from the node agent's annotation."""
    prometheus_interval: float = 15.0
    """Seconds between utilization refreshes (dcgm-exporter is scraped every 15 s)."""
    prometheus_timeout: float = 10.0
    """Seconds one refresh may take before it is abandoned (the previous samples stay and age out)."""
    cluster_state: Path | None = None
    """A YAML/JSON list of Node and Pod objects standing in for the API server, re-read when it changes."""
    kubeconfig: Path | None = None
    in_cluster: bool = False
    watch_dra: bool = False
    """Also watch ResourceSlices, ResourceClaims and ResourceClaimTemplates (resource.k8s.io/v1, Kubernetes 1.34+):
    on a DRA cluster. Off by default: an API server without that group would keep the cache from ever syncing."""
    metrics_port: int | None = None
    metrics_host: str | None = None
    """Address of the separate metrics port; None: the same as `host`. A sidecar answers the scheduler on loopback
    but must expose /metrics on the pod IP for Prometheus."""
    """None: /metrics on the main port; 0: no /metrics; else a separate plain-HTTP port."""
    reload_interval: float = 2.0
    """Seconds between checks of the policy file."""
    state_interval: float = 1.0
    """Seconds between checks of the cluster-state file (one stat call)."""
    max_body_bytes: int = MAX_BODY_BYTES
    connections: ConnectionLimits = CONNECTIONS
    """Timeouts and the connection bound of the extender's listener (and of a separate metrics port)."""
    gc: GcSettings = GcSettings()

    @property
    def watches_cluster(self) -> bool:
        return self.kubeconfig is not None or self.in_cluster

    @property
    def has_node_source(self) -> bool:
        """Names-only (nodeCacheCapable) requests need nodes and pods from somewhere."""
        return self.cluster_state is not None or self.watches_cluster

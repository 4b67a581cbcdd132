"""Run the extender: build its state sources, Prometheus poller and app from settings, and serve.

Kept apart from `scheduler_ext.cli` so that registering the subcommand imports none of this: `gpuguard` registers
every subcommand on each start, and the node agent's DaemonSet must not carry the extender's dependencies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector

from gpuguard.k8s.client import ClusterConfigError, api_client
from gpuguard.k8s.watch import ClusterWatch
from gpuguard.policy.loading import PolicyError
from gpuguard.web import serving
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import CleanupContext, create_app, freeze_state, tune_gc
from scheduler_ext.inventory.sources import ClusterStateSource, WatchSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.metrics import ExtenderMetrics
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import PollerSettings, PrometheusPoller, UtilizationBoard


def run_extender(settings: ExtenderSettings) -> int:
    tune_gc(settings.gc)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    try:
        policy = PolicySource(settings.policy_path, registry=registry)
        store = InventoryStore(pods_known=settings.has_node_source, catalog=policy.policy.catalog)
        board = UtilizationBoard()
        metrics = ExtenderMetrics(registry)
        background = _background(settings, store, board, metrics, policy)
    except PolicyError as error:
        print(f"gpuguard extender: the policy {settings.policy_path} is invalid:\n{error}", file=sys.stderr)
        return 2
    except (ClusterConfigError, OSError) as error:
        print(f"gpuguard extender: {error}", file=sys.stderr)
        return 2
    separate = settings.metrics_port is not None
    app = create_app(settings, policy=policy, registry=registry, store=store, board=board, metrics=metrics,
                     background=background, serve_metrics=not separate)
    listeners = [serving.Listener(app, settings.host, settings.port, name="extender")]
    if settings.metrics_port:
        listeners.append(serving.Listener(serving.metrics_app(registry), settings.metrics_host or settings.host,
                                          settings.metrics_port,
                                          name="metrics"))
    serving.run(listeners)
    return 0


def _after_refresh(
    result: str, metrics: ExtenderMetrics, store: InventoryStore, board: UtilizationBoard, policy: PolicySource
) -> None:
    """Count the refresh; after a good one, rebuild the cached utilization levels now rather than in a request."""
    metrics.utilization_refreshes.labels(result).inc()
    if result == "success":
        store.index.utilization_levels(board.nodes, policy.policy.scheduling.metrics_max_age, time.time())


def _background(
    settings: ExtenderSettings, store: InventoryStore, board: UtilizationBoard, metrics: ExtenderMetrics,
    policy: PolicySource,
) -> Sequence[CleanupContext]:
    contexts: list[CleanupContext] = []
    freeze = freeze_state(settings.gc)

    def loaded() -> None:
        freeze()
        metrics.state_loads.inc()

    if settings.cluster_state is not None:
        if not settings.cluster_state.exists():
            raise OSError(f"--cluster-state {settings.cluster_state} does not exist")
        file_source = ClusterStateSource(settings.cluster_state, store, on_loaded=loaded)
        contexts.append(lambda _: file_source.running(settings.state_interval))
    elif settings.watches_cluster:
        api = api_client(kubeconfig=settings.kubeconfig, in_cluster=settings.in_cluster)
        watch_source = WatchSource(lambda handler: ClusterWatch(api, handler), store, on_loaded=loaded)
        contexts.append(lambda _: watch_source.running())
    if settings.prometheus_url:
        poller = PrometheusPoller(
            PollerSettings(settings.prometheus_url, settings.prometheus_interval, settings.prometheus_timeout), board,
            on_result=lambda result: _after_refresh(result, metrics, store, board, policy),
            catalog=lambda: policy.policy.catalog,
        )
        contexts.append(lambda _: poller.running())
    return contexts


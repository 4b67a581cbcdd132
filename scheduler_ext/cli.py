"""`gpuguard extender`: the kube-scheduler extender (plain HTTP: a sidecar reached on localhost)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector

from gpuguard.cli_support import add_listen_arguments, add_policy_argument, env_default
from gpuguard.k8s.client import ClusterConfigError, api_client
from gpuguard.k8s.watch import ClusterWatch
from gpuguard.policy.loading import PolicyError
from gpuguard.web import serving
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import CleanupContext, create_app, freeze_state, tune_gc
from scheduler_ext.inventory.sources import ClusterStateSource, WatchSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.metrics import ExtenderMetrics
from scheduler_ext.settings import DEFAULT_PORT, ExtenderSettings, GcSettings
from scheduler_ext.utilization import PollerSettings, PrometheusPoller, UtilizationBoard


def add_extender_parser(commands: Any) -> None:
    parser = commands.add_parser("extender", help="run the kube-scheduler extender (filter + prioritize, HTTP)")
    add_listen_arguments(parser, port=DEFAULT_PORT)
    add_policy_argument(parser)
    parser.add_argument(
        "--prometheus-url", default=env_default("PROMETHEUS_URL"),
        help="Prometheus base URL for DCGM utilization (default: the node agent's annotation only)",
    )
    parser.add_argument(
        "--prometheus-interval", type=float, default=float(env_default("PROMETHEUS_INTERVAL", "15") or 15),
        metavar="SECONDS", help="seconds between utilization refreshes (default 15)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--cluster-state", type=Path, metavar="FILE", default=env_default("CLUSTER_STATE"),
        help="YAML/JSON list of Node and Pod objects standing in for the API server (re-read when it changes)",
    )
    source.add_argument("--kubeconfig", type=Path, default=env_default("KUBECONFIG_FILE"),
                        help="watch Nodes and Pods with this kubeconfig")
    source.add_argument("--in-cluster", action="store_true", help="watch Nodes and Pods with the service account")
    parser.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve /metrics on this separate plain-HTTP port instead of the main port (0: no /metrics)",
    )
    parser.add_argument(
        "--gc", choices=["tuned", "default"], default=env_default("GC", "tuned"),
        help="tuned (default): raised GC thresholds and a frozen state; default: Python's own (for comparison)",
    )
    parser.set_defaults(func=run_extender)


def settings_from_args(args: argparse.Namespace) -> ExtenderSettings:
    return ExtenderSettings(
        host=args.host,
        port=args.port,
        policy_path=args.policy,
        prometheus_url=args.prometheus_url,
        prometheus_interval=args.prometheus_interval,
        cluster_state=args.cluster_state,
        kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster,
        metrics_port=args.metrics_port,
        gc=GcSettings(mode=args.gc),
    )


def run_extender(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    tune_gc(settings.gc)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    try:
        policy = PolicySource(settings.policy_path, registry=registry)
        store = InventoryStore(pods_known=settings.has_node_source)
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
        listeners.append(serving.Listener(serving.metrics_app(registry), settings.host, settings.metrics_port,
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
    if settings.cluster_state is not None:
        if not settings.cluster_state.exists():
            raise OSError(f"--cluster-state {settings.cluster_state} does not exist")
        file_source = ClusterStateSource(settings.cluster_state, store, on_loaded=freeze)
        contexts.append(lambda _: file_source.running(settings.state_interval))
    elif settings.watches_cluster:
        api = api_client(kubeconfig=settings.kubeconfig, in_cluster=settings.in_cluster)
        watch_source = WatchSource(lambda handler: ClusterWatch(api, handler), store, on_loaded=freeze)
        contexts.append(lambda _: watch_source.running())
    if settings.prometheus_url:
        poller = PrometheusPoller(
            PollerSettings(settings.prometheus_url, settings.prometheus_interval, settings.prometheus_timeout), board,
            on_result=lambda result: _after_refresh(result, metrics, store, board, policy),
        )
        contexts.append(lambda _: poller.running())
    return contexts


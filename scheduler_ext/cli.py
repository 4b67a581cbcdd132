"""`gpuguard extender` and `python -m scheduler_ext`: the kube-scheduler extender's command line.

The server is imported when the command runs (`scheduler_ext.run`), not when it is registered.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gpuguard.cli_support import add_command, add_listen_arguments, add_policy_argument, env_default
from scheduler_ext.settings import DEFAULT_PORT, ExtenderSettings, GcSettings

HELP = "run the kube-scheduler extender (filter + prioritize, HTTP)"


DESCRIPTION = """
Answer kube-scheduler's extender calls (/filter, /prioritize, with node names or full Node objects): nodes without a
free device of the requested kind (whole GPU, MIG profile, time-sliced share) are filtered out with the reason, and
the rest scored 0..10 by how well the request packs and how idle their GPUs are (DCGM utilization from Prometheus, or
the node agent's annotation; stale or missing metrics score neutral). Nodes and pods come from a watch of the API
server or from a cluster-state file.
"""


def add_extender_parser(commands: Any) -> None:
    add_extender_arguments(add_command(
        commands, "extender", summary=HELP, description=DESCRIPTION,
        examples=["gpuguard extender --in-cluster --policy /etc/gpuguard/policy.yaml "
                  "--prometheus-url http://prometheus.monitoring:9090",
                  "gpuguard extender --cluster-state cluster-state.yaml --port 8888"],
    ))


def add_extender_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--state-interval", type=float, default=float(env_default("STATE_INTERVAL", "1") or 1), metavar="SECONDS",
        help="seconds between checks of --cluster-state for changes (default 1)",
    )
    parser.add_argument(
        "--metrics-host", default=env_default("METRICS_HOST"),
        help="address of the separate --metrics-port (default: the same as --host)",
    )
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
        metrics_host=args.metrics_host,
        state_interval=args.state_interval,
        gc=GcSettings(mode=args.gc),
    )


def run_extender(args: argparse.Namespace) -> int:
    from scheduler_ext.run import run_extender as run

    return run(settings_from_args(args))

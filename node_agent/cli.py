"""`gpuguard agent` and `python -m node_agent`: the node agent's command line.

`python -m node_agent` builds only this parser, so the agent process never imports the other services' modules
(the webhook's aiohttp alone would cost a quarter of the agent's memory budget).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector

from gpuguard.cli_support import add_command, add_policy_argument, env_default, env_int
from gpuguard.contracts.node_inventory import encode_inventory
from gpuguard.k8s.client import ClusterConfigError
from gpuguard.policy.loading import PolicyError
from gpuguard.web.policy_source import PolicySource
from node_agent.app import Agent, open_backend, open_cluster
from node_agent.backend import BackendUnavailable
from node_agent.collector import GpuCollector
from node_agent.metrics import AgentMetrics
from node_agent.podresources import SOCKET, PodResourcesClient
from node_agent.serving import HttpServer, create_http_app
from node_agent.settings import AgentSettings, BackendName

log = logging.getLogger(__name__)

HELP = "run the node agent: GPU metrics (DCGM names), GPU/MIG inventory annotation, time-slicing replicas"


DESCRIPTION = """
Run on each GPU node (the chart's DaemonSet): read the GPUs and MIG instances through NVML, export their metrics under
DCGM's names on /metrics, publish the node's GPU/MIG inventory as the gpuguard.io/gpu-inventory annotation (patched
only when it changes), and write the time-slicing replicas the policy gives this node into the NVIDIA device
plugin's config. Without a GPU, --fake-gpus runs the same agent on described GPUs.
"""


def add_agent_parser(commands: Any) -> None:
    parser = add_command(
        commands, "agent", summary=HELP, description=DESCRIPTION,
        examples=["gpuguard agent --in-cluster --policy /etc/gpuguard/policy.yaml",
                  "gpuguard agent --node-name gpu-1 --fake-gpus examples/fake-gpus/h100-mig.yaml --once"],
    )
    add_agent_arguments(parser)
    parser.set_defaults(func=run_agent)


def add_agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-name", default=os.environ.get("NODE_NAME") or env_default("NODE_NAME"),
        help="this node's name (default: env NODE_NAME, which the chart sets from spec.nodeName)",
    )
    add_policy_argument(parser)
    parser.add_argument(
        "--backend", choices=["nvml", "fake", "null"], default=env_default("BACKEND"),
        help="where GPU readings come from (default: fake when --fake-gpus is given, else nvml)",
    )
    parser.add_argument("--fake-gpus", type=Path, default=env_default("FAKE_GPUS"), metavar="FILE",
                        help="GPUs for the fake backend, in the node-annotation schema (YAML or JSON)")
    parser.add_argument("--fallback-to-null", action="store_true", default=bool(env_default("FALLBACK_TO_NULL")),
                        help="when NVML cannot start, report zero GPUs instead of exiting")
    parser.add_argument(
        "--pod-resources-socket", default=env_default("POD_RESOURCES_SOCKET", str(SOCKET)), metavar="PATH",
        help=f"kubelet PodResources socket for pod/namespace/container labels (default {SOCKET}); '' turns them off",
    )
    parser.add_argument("--host", default=env_default("HOST", "0.0.0.0"), help="address for the metrics port")
    parser.add_argument("--metrics-port", type=int, default=env_int("METRICS_PORT", 9401),
                        help="plain-HTTP /metrics, /healthz, /readyz (default 9401); 0 disables")
    parser.add_argument("--interval", type=float, default=float(env_default("INTERVAL") or 15), metavar="S",
                        help="seconds between report cycles (default 15)")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--kubeconfig", type=Path, help="talk to the cluster of this kubeconfig")
    cluster.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    cluster.add_argument("--cluster-state", type=Path, metavar="FILE",
                         help="read and write a cluster-state file instead of an API server")
    parser.add_argument("--once", action="store_true", help="run one cycle, print the inventory JSON, exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every change to the node and the ConfigMap instead of making it")


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    if args.interval <= 0:
        raise ValueError(f"--interval must be positive, got {args.interval}")
    has_cluster = bool(args.kubeconfig or args.in_cluster or args.cluster_state)
    if not args.node_name and has_cluster:
        raise ValueError("give --node-name or set NODE_NAME (in the chart: fieldRef spec.nodeName)")
    backend: BackendName = args.backend or ("fake" if args.fake_gpus else "nvml")
    return AgentSettings(
        node_name=args.node_name or socket.gethostname(), policy_path=args.policy, backend=backend,
        fake_gpus=args.fake_gpus, fallback_to_null=args.fallback_to_null, host=args.host,
        pod_resources_socket=Path(args.pod_resources_socket) if args.pod_resources_socket else None,
        metrics_port=args.metrics_port, interval=args.interval, kubeconfig=args.kubeconfig,
        in_cluster=args.in_cluster, cluster_state=args.cluster_state, once=args.once, dry_run=args.dry_run,
    )


def run_agent(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        return _fail(str(error))
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = AgentMetrics(registry)
    try:
        policy = PolicySource(settings.policy_path, registry=registry)
        backend = open_backend(settings)
    except PolicyError as error:
        return _fail(f"the policy {settings.policy_path} is invalid:\n{error}")
    except (BackendUnavailable, OSError) as error:
        return _fail(str(error))
    pods = PodResourcesClient(settings.pod_resources_socket) if settings.pod_resources_socket else None
    try:
        api = open_cluster(settings)
        registry.register(GpuCollector(backend, hostname=settings.node_name, metrics=metrics, pods=pods))
        agent = Agent(settings, backend=backend, policy=policy, api=api, metrics=metrics)
        return _run_once(agent) if settings.once else _serve(agent, registry, settings, pods)
    except ClusterConfigError as error:
        return _fail(str(error))
    finally:
        if pods is not None:
            pods.close()
        backend.close()


def _fail(message: str) -> int:
    print(f"gpuguard agent: {message}", file=sys.stderr)
    return 2


def _run_once(agent: Agent) -> int:
    ok = agent.cycle()
    assert agent.inventory is not None
    print(encode_inventory(agent.inventory))
    return 0 if ok else 1


def _serve(
    agent: Agent, registry: CollectorRegistry, settings: AgentSettings, pods: PodResourcesClient | None
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if pods is not None:
        pods.start()
    if settings.metrics_port:
        try:
            server = HttpServer(create_http_app(registry, ready=lambda: agent.ready), host=settings.host,
                                port=settings.metrics_port)
        except OSError as error:
            return _fail(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {error.strerror or error}"
                         " (choose another --metrics-port, or 0 to disable)")
        server.start()
        log.info("metrics on http://%s:%d/metrics (backend %s)", settings.host, server.port, agent.backend.name)
    try:
        agent.run(stop)
    finally:
        if server is not None:
            server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m node_agent`: the same arguments as `gpuguard agent`, plus --log-level."""
    parser = argparse.ArgumentParser(prog="python -m node_agent", description=HELP)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_agent_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return run_agent(args)

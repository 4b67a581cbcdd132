"""`gpuguard demo`: the whole flow on one machine, no cluster, no GPU.

Writes the built-in cluster to a cluster-state file, starts the webhook (self-signed TLS), one node agent per GPU node
(fake GPUs) and, if a `prometheus` binary is on PATH, a real Prometheus scraping the agents; once every agent has
published its inventory it starts the extender on the same file (and Prometheus, when there is one). Then each demo
pod goes through admission and scheduling (`gpuguard.demo.flow`) and is bound, and every process is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from gpuguard.contracts.node_inventory import ANNOTATION
from gpuguard.demo import cluster, flow, pods
from gpuguard.demo.services import (
    Service,
    free_port,
    prometheus_binary,
    prometheus_config,
    python_module,
    stop_all,
    wait_ready,
)
from gpuguard.k8s.cluster_state import ClusterStateFile
from gpuguard.policy.gpustate import gpu_request
from gpuguard.web.tls import default_sans, ensure_self_signed

DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"
Say = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    workdir: Path | None = None
    """Where the cluster state, certificates, fake GPUs and service logs go (default: a temporary directory)."""
    prometheus: bool | None = None
    """None: use Prometheus if the binary is on PATH."""
    timeout: float = 30.0
    """Seconds any one service may take to come up, or a published state to reach the extender."""


@dataclass
class DemoResult:
    trips: list[flow.Trip]
    used_prometheus: bool
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    time_slicing: str = ""
    workdir: Path | None = None

    @property
    def clean_exit(self) -> bool:
        return all(code == 0 for code in self.exit_codes.values())


@dataclass
class _Stage:
    workdir: Path
    state: ClusterStateFile
    services: list[Service] = field(default_factory=list)


async def run_demo(settings: DemoSettings, *, say: Say = print) -> DemoResult:
    use_prometheus = settings.prometheus if settings.prometheus is not None else prometheus_binary() is not None
    async with _workdir(settings.workdir) as workdir:
        stage = _Stage(workdir, ClusterStateFile(workdir / "cluster-state.yaml"))
        result = DemoResult([], use_prometheus, workdir=workdir)
        try:
            endpoints = await _start(stage, settings, use_prometheus=use_prometheus, say=say)
            result.time_slicing = _time_slicing_label(stage.state)
            result.trips = await _schedule_all(stage, endpoints, settings, say=say)
        finally:
            result.exit_codes = await asyncio.to_thread(stop_all, stage.services)
        return result


@contextlib.asynccontextmanager
async def _workdir(chosen: Path | None) -> AsyncIterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix="gpuguard-demo-") as temporary:
        yield Path(temporary)


async def _start(stage: _Stage, settings: DemoSettings, *, use_prometheus: bool, say: Say) -> flow.Endpoints:
    workdir = stage.workdir
    nodes = [cluster.node_object(node) for node in cluster.NODES]
    stage.state.path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}))
    tls = ensure_self_signed(workdir / "tls", default_sans("gpuguard-webhook", "gpuguard"))
    webhook_tls = ssl.create_default_context(cafile=str(tls.ca_cert))
    webhook = _webhook(workdir, webhook_tls)
    agents = [_agent(workdir, stage.state.path, node) for node in cluster.NODES if node.gpus]
    first = [webhook, *agents]
    prometheus = _prometheus(workdir, agents) if use_prometheus else None
    if prometheus is not None:
        first.append(prometheus)
    say(f"starting the webhook, {len(agents)} node agents" + (" and Prometheus" if prometheus else "") + " ...")
    await _launch(stage, first, settings)
    await _wait_for_inventories(stage.state, [n.name for n in cluster.NODES if n.gpus], settings.timeout)
    extender = _extender(workdir, stage.state.path, prometheus)
    say("every agent published its GPU inventory; starting the scheduler extender ...")
    await _launch(stage, [extender], settings)
    endpoints = flow.Endpoints(webhook.ready_url.removesuffix("/readyz"), webhook_tls,
                               extender.ready_url.removesuffix("/readyz"))
    if prometheus is not None:
        say("waiting for Prometheus to scrape the agents and the extender to read utilization from it ...")
        async with aiohttp.ClientSession() as session:
            await flow.wait_for_metric(session, endpoints.extender + "/metrics",
                                       "gpuguard_extender_utilization_nodes", at_least=len(agents),
                                       timeout=settings.timeout)
    return endpoints


async def _launch(stage: _Stage, services: Sequence[Service], settings: DemoSettings) -> None:
    for service in services:
        stage.services.append(service)
        service.start()
    await wait_ready(services, timeout=settings.timeout)


def _webhook(workdir: Path, context: ssl.SSLContext) -> Service:
    port = free_port()
    argv = python_module("webhook", "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(port),
                         "--self-signed", str(workdir / "tls"), "--service-name", "gpuguard-webhook",
                         "--namespace", "gpuguard", "--metrics-port", "0")
    return Service("webhook", argv, f"https://127.0.0.1:{port}/readyz", workdir / "webhook.log", context)


def _agent(workdir: Path, state: Path, node: cluster.DemoNode) -> Service:
    port = free_port()
    gpus = workdir / f"gpus-{node.name}.yaml"
    gpus.write_text(yaml.safe_dump(cluster.fake_gpus(node), sort_keys=False))
    argv = python_module("node_agent", "--log-level", "WARNING", "--node-name", node.name, "--backend", "fake",
                         "--fake-gpus", str(gpus), "--cluster-state", str(state), "--host", "127.0.0.1",
                         "--metrics-port", str(port), "--interval", "1")
    return Service(f"agent {node.name}", argv, f"http://127.0.0.1:{port}/healthz", workdir / f"agent-{node.name}.log")


def _prometheus(workdir: Path, agents: Sequence[Service]) -> Service:
    binary = prometheus_binary()
    assert binary is not None
    port = free_port()
    config = workdir / "prometheus.yml"
    targets = [agent.ready_url.removeprefix("http://").removesuffix("/healthz") for agent in agents]
    config.write_text(prometheus_config(targets))
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    return Service("prometheus", argv, f"http://127.0.0.1:{port}/-/ready", workdir / "prometheus.log")


def _extender(workdir: Path, state: Path, prometheus: Service | None) -> Service:
    port = free_port()
    argv = python_module("scheduler_ext", "--log-level", "WARNING", "--host", "127.0.0.1", "--port", str(port),
                         "--cluster-state", str(state), "--state-interval", "0.1")
    if prometheus is not None:
        argv += ["--prometheus-url", prometheus.ready_url.removesuffix("/-/ready"), "--prometheus-interval", "1"]
    return Service("extender", argv, f"http://127.0.0.1:{port}/readyz", workdir / "extender.log")


async def _wait_for_inventories(state: ClusterStateFile, names: Sequence[str], timeout: float) -> None:
    """Until every GPU node carries the agent's annotation (and time-sliced nodes their device-plugin config)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = {name: node.shared_replicas > 1 for node in cluster.NODES for name in [node.name] if name in names}
    while True:
        nodes = (await asyncio.to_thread(state.load)).nodes
        done = [name for name, sliced in wanted.items() if _published(nodes.get(name, {}), sliced=sliced)]
        if len(done) == len(wanted):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"node agents did not publish in {timeout:.0f} s: {sorted(set(wanted) - set(done))}")
        await asyncio.sleep(0.1)


def _published(node: dict[str, object], *, sliced: bool) -> bool:
    metadata = node.get("metadata") or {}
    assert isinstance(metadata, dict)
    has_inventory = ANNOTATION in (metadata.get("annotations") or {})
    return has_inventory and (not sliced or DEVICE_PLUGIN_CONFIG_LABEL in (metadata.get("labels") or {}))


def _time_slicing_label(state: ClusterStateFile) -> str:
    for name, node in state.load().nodes.items():
        value = ((node.get("metadata") or {}).get("labels") or {}).get(DEVICE_PLUGIN_CONFIG_LABEL)
        if value:
            return f"{name}: {DEVICE_PLUGIN_CONFIG_LABEL}={value}"
    return ""


async def _schedule_all(stage: _Stage, endpoints: flow.Endpoints, settings: DemoSettings, *, say: Say) -> list[flow.Trip]:
    nodes = list(stage.state.load().nodes.values())
    trips: list[flow.Trip] = []
    bound = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.timeout)) as session:
        for demo_pod in pods.PODS:
            trip = flow.Trip(demo_pod.namespace, demo_pod.name)
            trips.append(trip)
            stored = await flow.admit(session, endpoints, pods.predictor_pod(demo_pod), trip)
            if trip.denied:
                continue
            pod = flow.named(stored, demo_pod.namespace)
            names, trip.not_sent = flow.scheduler_candidates(pod, nodes)
            await flow.schedule(session, endpoints, pod, names, trip)
            if not trip.node:
                continue
            await asyncio.to_thread(flow.bind, stage.state, pod, trip.node)
            if not gpu_request(pod).wants_gpu:
                continue  # the extender's cache counts only pods holding GPUs
            bound += 1
            await flow.wait_for_metric(session, endpoints.extender + "/metrics", "gpuguard_extender_cache_gpu_pods",
                                       at_least=bound, timeout=settings.timeout)
    return trips

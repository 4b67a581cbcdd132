"""The agent: a loop that reads the GPUs, publishes the inventory annotation and applies time-slicing, every interval.

Wiring only: which backend and cluster to use (`open_backend`, `open_cluster`) and the cycle that calls the pure
parts (`inventory`, `timeslicing`) and the thin writers (`InventoryReporter`, `TimeSlicer`). API errors are
translated here, once: counted, logged with the retry delay, and retried after a back-off; the GPU metrics keep
being served meanwhile. A bug in one cycle is logged and costs that cycle, never the DaemonSet pod.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gpuguard.contracts.node_inventory import NodeInventory
from gpuguard.k8s.cluster_state import ClusterStateFile
from gpuguard.k8s.nodes import ClusterStateNodes, KubernetesNodes, NodeApi, NodeApiError
from gpuguard.web.policy_source import PolicySource
from node_agent.backend import Backend, BackendUnavailable
from node_agent.inventory import build_inventory
from node_agent.metrics import AgentMetrics
from node_agent.null import NullBackend
from node_agent.reporter import Backoff, InventoryReporter
from node_agent.settings import AgentSettings
from node_agent.timeslicing import LABEL, TimeSlicer, TimeSlicingError

log = logging.getLogger(__name__)

Say = Callable[[str], None]


def open_backend(settings: AgentSettings) -> Backend:
    """The configured backend; `BackendUnavailable` with a fix-it message when it cannot start."""
    if settings.backend == "null":
        return NullBackend("--backend null")
    if settings.backend == "fake":
        if settings.fake_gpus is None:
            raise BackendUnavailable("--backend fake needs --fake-gpus FILE (node-annotation schema, YAML or JSON)")
        from node_agent.fake import FakeBackend  # imported here: its file schema is only needed for this backend

        return FakeBackend(settings.fake_gpus)
    try:
        from node_agent.nvml import NvmlBackend  # imported here: pynvml is only needed for this backend

        return NvmlBackend()
    except BackendUnavailable as error:
        if not settings.fallback_to_null:
            raise
        return NullBackend(str(error))


def open_cluster(settings: AgentSettings) -> NodeApi | None:
    if settings.cluster_state is not None:
        return ClusterStateNodes(ClusterStateFile(settings.cluster_state))
    if settings.kubeconfig is not None or settings.in_cluster:
        return KubernetesNodes.connect(kubeconfig=settings.kubeconfig, in_cluster=settings.in_cluster)
    log.info("no --kubeconfig, --in-cluster or --cluster-state: serving metrics only "
             "(no inventory annotation, no time-slicing)")
    return None


def operation_kind(error: NodeApiError) -> str:
    """`read node n1` -> `read_node`: the metric label, without object names."""
    return "_".join(error.operation.split()[:2]).lower()


def once_per_message(say: Say, *, remember: int = 64) -> Say:
    """Say each distinct message once: a dry run re-plans every minute but should print each change once.

    Only the last `remember` messages are kept, so a dry run left running for days does not grow without bound.
    """
    said: collections.OrderedDict[str, None] = collections.OrderedDict()

    def say_once(message: str) -> None:
        if message in said:
            return
        said[message] = None
        if len(said) > remember:
            said.popitem(last=False)
        say(message)

    return say_once


@dataclass(slots=True)
class _NodeView:
    labels: dict[str, str]
    read_at: float


class Agent:
    """One node's agent: `cycle()` once (`--once`), or `run()` until stopped. Metrics are served separately."""

    def __init__(
        self, settings: AgentSettings, *, backend: Backend, policy: PolicySource, api: NodeApi | None,
        metrics: AgentMetrics, say: Say = print, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.policy = policy
        self.api = api
        self.metrics = metrics
        self._clock = clock
        self._wall = wall
        self.ready = False
        self.inventory: NodeInventory | None = None
        self.backoff = Backoff(base=settings.interval, cap=settings.backoff_cap)
        say = once_per_message(say) if settings.dry_run else say
        self._reporter = InventoryReporter(api, settings.node_name, metrics=metrics, dry_run=settings.dry_run,
                                           say=say) if api else None
        self._slicer = TimeSlicer(api, settings.node_name, metrics=metrics, dry_run=settings.dry_run,
                                  say=say, clock=clock, settle=settings.time_slicing_settle) if api else None
        self._node: _NodeView | None = None
        self._sliced_generation = 0
        """The policy generation time-slicing was last applied for (0: never)."""

    def cycle(self) -> bool:
        """Read the GPUs and bring the node up to date; False when the cluster could not be updated."""
        snapshot = self.backend.read()
        self.metrics.record_read(snapshot)
        shown = self._reporter.current if self._reporter else None
        self.inventory = build_inventory(snapshot, now=self._wall(), previous=shown)
        self.ready = True
        self.policy.check()
        if self.api is None:
            return True
        now = self._clock()
        if not self.backoff.ready(now):
            return False
        try:
            self._sync(self.inventory, now)
        except NodeApiError as error:
            self._api_failed(error, now)
            return False
        self.backoff.succeeded()
        self.metrics.last_report.set(time.time())
        return True

    def run(self, stop: threading.Event) -> None:
        """Cycle every interval until `stop` is set."""
        while not stop.is_set():
            started = self._clock()
            try:
                self.cycle()
            except Exception:  # a bug must cost one cycle, not the pod: log it and try again next interval
                log.exception("agent cycle failed")
            stop.wait(max(self.settings.interval - (self._clock() - started), 0.0))

    def _sync(self, inventory: NodeInventory, now: float) -> None:
        assert self.api is not None and self._reporter is not None
        if self._node is None or now - self._node.read_at >= self.settings.node_refresh:
            node = self.api.read_node(self.settings.node_name)
            self._reporter.observe(node)
            self._node = _NodeView(dict((node.get("metadata") or {}).get("labels") or {}), now)
            self._sliced_generation = 0  # labels may have changed: re-plan time-slicing
        self._reporter.report(inventory, refresh_after=self._refresh_after())
        if self._sliced_generation != self.policy.generation:
            self._apply_time_slicing(self._node)

    def _refresh_after(self) -> float:
        """Republish an unchanged annotation at half the policy's metricsMaxAge, so readers never see it stale."""
        max_age = self.policy.policy.scheduling.metrics_max_age
        return max(max_age / 2, self.settings.interval) if max_age > 0 else 0.0

    def _apply_time_slicing(self, node: _NodeView) -> None:
        assert self._slicer is not None
        generation = self.policy.generation
        try:
            value = self._slicer.apply(self.policy.policy.time_slicing, node.labels)
        except TimeSlicingError as error:
            log.error("time-slicing not applied: %s", error)
        else:
            _set_label(node.labels, value)
        self._sliced_generation = generation

    def _api_failed(self, error: NodeApiError, now: float) -> None:
        self.metrics.api_errors.labels(operation_kind(error)).inc()
        delay = self.backoff.failed(now)
        self._node = None  # read the node again before the next patch: it may have changed meanwhile
        log.warning("Kubernetes API error (%s); retrying in %.0f s", error, delay)


def _set_label(labels: dict[str, str], value: str | None) -> None:
    if value is None:
        labels.pop(LABEL, None)
    else:
        labels[LABEL] = value

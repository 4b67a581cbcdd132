"""The extender's view of the cluster: per-node GPU state, recomputed only where something changed.

Node facts and pod usages arrive from a source (a `--cluster-state` file, a Kubernetes watch) or, for full-Node
requests, from the request itself. Each node's `NodeGpuState` (with its precomputed summary) is rebuilt when its Node
object or one of its pods changes, so a filter or prioritize call does one dictionary lookup per candidate. Full-Node
requests reuse the facts of nodes whose resourceVersion did not change since the last request. MIG layouts are
resolved through the catalog of the policy in force (`use_catalog`): when a reloaded policy adds or replaces GPU
models, every node's facts are rebuilt from what they keep, before the next decision reads them.

Nothing here reserves capacity: without a bind verb the scheduler may bind elsewhere, and reservations would go stale
(Project-HAMi/HAMi#2923). Capacity is released the moment the pod's deletion or termination is seen. Single-threaded: sources
deliver changes on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from gpuguard.contracts.extender import node_name
from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.gpuindex import GpuIndex
from gpuguard.policy.gpustate import NodeGpuState, with_used
from gpuguard.policy.podspec import mapping
from scheduler_ext.inventory.nodes import NodeFacts, node_facts, with_catalog
from scheduler_ext.inventory.pods import PodUsage, pod_key, pod_usage

log = logging.getLogger(__name__)


class InventoryStore:
    def __init__(self, *, pods_known: bool = True, catalog: MigCatalog = mig.BUILTIN) -> None:
        self.pods_known = pods_known
        self.catalog = catalog
        """The MIG catalog node facts are resolved through (the policy's)."""
        """False when no source lists pods: states then carry `used=None` and the agent's busy flags count."""
        self.nodes_loaded = False
        self.pods_loaded = False
        self.generation = 0
        """Bumped on every change; tells pollers and tests that something moved."""
        self._facts: dict[str, NodeFacts] = {}
        self._pods: dict[str, PodUsage] = {}
        self._used: dict[str, dict[str, int]] = {}
        self.index = GpuIndex()
        """Every node's current state, grouped for fast filter/prioritize over names."""
        self._pod_versions: dict[str, int] = {}
        self._request_memo: dict[str, tuple[str, int, NodeGpuState]] = {}
        self.node_texts: dict[str, dict[str, Any]] = {}
        """The last full-Node request's Node texts -> decoded Nodes (`parse_args(known_nodes=...)`)."""
        self._problems: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------------- reads

    @property
    def ready(self) -> bool:
        return self.nodes_loaded and (self.pods_loaded or not self.pods_known)

    @property
    def node_count(self) -> int:
        return len(self._facts)

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    def state(self, name: str) -> NodeGpuState | None:
        return self.index.get(name)

    def states_for_names(self, names: Sequence[str]) -> list[NodeGpuState | None]:
        get = self.index.states.get
        return [get(name) for name in names]

    def states_for_objects(self, items: Sequence[dict[str, Any]]) -> list[NodeGpuState]:
        """States of the Node objects of a full-Node request, with the pods this store knows applied.

        A node whose resourceVersion and pods are unchanged since the previous request reuses its state, so only the
        JSON decoding scales with the request size.
        """
        memo: dict[str, tuple[str, int, NodeGpuState]] = {}
        previous, pod_versions = self._request_memo, self._pod_versions
        states = []
        for item in items:
            name, version = node_name(item), str(mapping(item.get("metadata")).get("resourceVersion") or "")
            pods = pod_versions.get(name, 0)
            cached = previous.get(name)
            if cached is not None and version and cached[0] == version and cached[1] == pods:
                entry = cached
            else:
                entry = (version, pods, self._with_pods(self._checked(node_facts(item, catalog=self.catalog))))
            memo[name] = entry
            states.append(entry[2])
        self._request_memo = memo
        return states

    # ------------------------------------------------------------------------------------------------------- nodes

    def replace_nodes(self, nodes: Iterable[dict[str, Any]]) -> None:
        facts = {f.name: f for f in (node_facts(n, catalog=self.catalog) for n in nodes) if f.name}
        for name in set(self._facts) - set(facts):
            self._forget_node(name)
        for fact in facts.values():
            self._put_facts(fact)
        self.nodes_loaded = True
        self.generation += 1

    def upsert_node(self, node: dict[str, Any]) -> None:
        fact = node_facts(node, catalog=self.catalog)
        if fact.name:
            self._put_facts(fact)
            self.generation += 1

    def delete_node(self, node: dict[str, Any]) -> None:
        self._forget_node(str((node.get("metadata") or {}).get("name") or ""))
        self.generation += 1

    def use_catalog(self, catalog: MigCatalog) -> None:
        """Resolve MIG layouts through `catalog` from now on; rebuild every node's facts if it differs."""
        if catalog is self.catalog or catalog == self.catalog:
            return
        self.catalog = catalog
        self._request_memo = {}
        for name, fact in list(self._facts.items()):
            self._facts[name] = with_catalog(fact, catalog)
            self._refresh(name)
        self.generation += 1

    def _put_facts(self, fact: NodeFacts) -> None:
        old = self._facts.get(fact.name)
        if old is not None and fact.version and old.version == fact.version:
            return
        self._facts[fact.name] = self._checked(fact)
        self._refresh(fact.name)

    def _forget_node(self, name: str) -> None:
        self._facts.pop(name, None)
        self.index.remove(name)
        self._problems.pop(name, None)

    def _checked(self, fact: NodeFacts) -> NodeFacts:
        """Log a bad inventory annotation once per node and distinct problem."""
        if fact.problem and self._problems.get(fact.name) != fact.problem:
            log.warning("node %s: %s; using allocatable and labels only", fact.name, fact.problem)
        if fact.problem:
            self._problems[fact.name] = fact.problem
        else:
            self._problems.pop(fact.name, None)
        return fact

    # -------------------------------------------------------------------------------------------------------- pods

    def replace_pods(self, pods: Iterable[dict[str, Any]]) -> None:
        usages = {u.key: u for u in map(pod_usage, pods) if u is not None}
        touched = {u.node for u in self._pods.values()} | {u.node for u in usages.values()}
        self._pods = usages
        self._used = {}
        for usage in usages.values():
            self._count(usage, +1)
        for node in touched:
            self._bump(node)
        self.pods_loaded = True
        self.generation += 1

    def upsert_pod(self, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        old, new = self._pods.get(key), pod_usage(pod)
        if old == new:
            return
        if old is not None:
            self._count(old, -1)
            del self._pods[key]
            self._bump(old.node)
        if new is not None:
            self._pods[key] = new
            self._count(new, +1)
            self._bump(new.node)
        self.generation += 1

    def delete_pod(self, pod: dict[str, Any]) -> None:
        old = self._pods.pop(pod_key(pod), None)
        if old is not None:
            self._count(old, -1)
            self._bump(old.node)
            self.generation += 1

    def _count(self, usage: PodUsage, sign: int) -> None:
        used = self._used.setdefault(usage.node, {})
        for resource, count in usage.resources:
            used[resource] = used.get(resource, 0) + sign * count
            if used[resource] <= 0:
                del used[resource]

    def _bump(self, node: str) -> None:
        self._pod_versions[node] = self._pod_versions.get(node, 0) + 1
        self._refresh(node)

    # ----------------------------------------------------------------------------------------------------- derived

    def _refresh(self, name: str) -> None:
        fact = self._facts.get(name)
        if fact is not None:
            self.index.put(self._with_pods(fact))

    def _with_pods(self, fact: NodeFacts) -> NodeGpuState:
        if not self.pods_known:
            return fact.state
        return with_used(fact.state, dict(self._used.get(fact.name, {})))

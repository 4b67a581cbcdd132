"""`gpuguard mig-layouts`: demand-driven MIG layouts, applied through NVIDIA's MIG manager. Off unless the policy's
`dynamicMig.enabled` is true.

Each round (every `dynamicMig.interval`): list the nodes of the dynamic-MIG pools (`dynamicMig.poolLabel`) and the
cluster's non-terminated pods; move every change under way one step along the MIG manager's label protocol
(`gpuguard.policy.migrollout`); build each node's GPU state with the pods that hold its instances, exactly as the
extender does (`scheduler_ext.inventory`); plan (`gpuguard.policy.migplan`) from the pods kube-scheduler found
unschedulable; start the plan's moves. `--dry-run` prints the plan and the steps and writes nothing.

It runs as its own single-replica Deployment, beside the extender rather than inside it: it is the only gpuguard
component that writes Nodes' MIG labels and taints, so that permission (patch on nodes) stays out of the scheduler's
path and there is one writer; it shares the extender's node-state code (this package), so both see the same GPU
instances as held. Every fact it needs to resume (previous layout, change time) is on the Node, so a restart loses
nothing.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from gpuguard.cli_support import add_command, add_policy_argument, env_default
from gpuguard.policy.gpustate import gpu_request
from gpuguard.policy.migconfig import merged
from gpuguard.policy.migplan import MigNode, Plan, PoolRules, plan
from gpuguard.policy.migrollout import NodeView, Step, progress, start
from gpuguard.policy.model import Policy
from gpuguard.policy.podspec import mapping, sequence
from scheduler_ext.inventory.store import InventoryStore

log = logging.getLogger(__name__)

HELP = "change MIG layouts to what waiting pods need, through NVIDIA's MIG manager (policy dynamicMig)"
DESCRIPTION = """
Every round, list the dynamic-MIG pools' nodes and the pods kube-scheduler could not place, choose idle MIG nodes to
move to layouts of the MIG manager's configuration that let those pods fit, and set nvidia.com/mig.config on them;
the node stays tainted while the MIG manager works, and a failed change is rolled back. Off unless the policy's
dynamicMig.enabled is true; --dry-run prints the plans and writes nothing.
"""
EXAMPLES = ["gpuguard mig-layouts --kubeconfig ~/.kube/config --policy policy.yaml --dry-run --once",
            "gpuguard mig-layouts --in-cluster --policy /etc/gpuguard/policy.yaml --metrics-port 9407"]
LIVE = "status.phase!=Succeeded,status.phase!=Failed"
OUTCOMES = ("made", "applied", "failed", "rolled-back", "stuck")


class ClusterApi(Protocol):
    def list_nodes(self, *, label_selector: str = "") -> list[dict[str, Any]]: ...

    def list_pods(self, *, field_selector: str = "") -> list[dict[str, Any]]: ...

    def patch_node(self, name: str, patch: dict[str, Any]) -> None: ...


class LayoutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.changes = Counter(
            "gpuguard_mig_layout_changes",
            "MIG layout changes by outcome: made (label set), applied (the MIG manager reported success), failed "
            "(it reported failed; the label was rolled back), rolled-back (the rollback succeeded), stuck (the "
            "rollback failed too; the node stays tainted for an admin)",
            ["outcome"], registry=registry)
        self.plans = Counter("gpuguard_mig_plans", "Planning rounds that chose at least one layout change",
                             registry=registry)
        self.nodes = Gauge("gpuguard_mig_nodes", "Dynamic-MIG pool nodes by pool and nvidia.com/mig.config",
                           ["pool", "layout"], registry=registry)
        self.waiting = Gauge("gpuguard_mig_pending_pods", "Unschedulable pods that ask for MIG, at the last round",
                             registry=registry)
        for outcome in OUTCOMES:
            self.changes.labels(outcome)

    def count(self, step: Step) -> None:
        outcome = "made" if step.event == "started" else step.event
        if outcome:
            self.changes.labels(outcome).inc()

    def layouts(self, counts: Mapping[tuple[str, str], int]) -> None:
        self.nodes.clear()
        for (pool, layout), n in counts.items():
            self.nodes.labels(pool, layout or "(none)").set(n)


@dataclass
class Round:
    """What one round saw and did."""

    plan: Plan | None = None
    steps: list[Step] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def unschedulable(pod: Mapping[str, Any]) -> bool:
    """Pending, unbound, and kube-scheduler said why (condition PodScheduled False, reason Unschedulable)."""
    spec, status = mapping(pod.get("spec")), mapping(pod.get("status"))
    if spec.get("nodeName") or status.get("phase") != "Pending":
        return False
    return any(mapping(c).get("type") == "PodScheduled" and mapping(c).get("status") == "False"
               and mapping(c).get("reason") == "Unschedulable" for c in sequence(status.get("conditions")))


def pool_rules(policy: Policy) -> dict[str, PoolRules]:
    return {p.name: PoolRules(p.name, p.layouts, dict(p.minimum), p.cooldown) for p in policy.dynamic_mig.pools}


def run_round(api: ClusterApi, policy: Policy, *, now: float, dry_run: bool = False,
              metrics: LayoutMetrics | None = None) -> Round:
    """One round (see module); errors of single patches are collected, not raised."""
    section = policy.dynamic_mig
    result = Round()
    nodes = api.list_nodes(label_selector=section.pool_label)
    views = {v.name: v for v in map(NodeView.of, nodes)}
    for view in views.values():
        step = progress(view)
        if step is not None:
            _write(api, step, result, dry_run, metrics)
    pods = api.list_pods(field_selector=LIVE)
    store = InventoryStore(catalog=policy.catalog)
    store.replace_nodes(nodes)
    store.replace_pods(pods)
    waiting = [gpu_request(p) for p in pods if unschedulable(p)]
    stepped = {s.node for s in result.steps}
    mig_nodes = list(_mig_nodes(views.values(), store, section.pool_label, stepped))
    made = plan(waiting, mig_nodes, pool_rules(policy), now=now, configs=merged(section.mig_configs),
                catalog=policy.catalog)
    result.plan = made
    for move in made.moves:
        _write(api, start(views[move.node], move.to_config, now=now), result, dry_run, metrics)
    if metrics is not None:
        metrics.waiting.set(made.waiting)
        if made.moves and not dry_run:
            metrics.plans.inc()
        layouts: dict[tuple[str, str], int] = {}
        for node in mig_nodes:
            key = (node.pool, next((m.to_config for m in made.moves if m.node == node.name), node.config))
            layouts[key] = layouts.get(key, 0) + 1
        metrics.layouts(layouts)
    return result


def _mig_nodes(views: Iterable[NodeView], store: InventoryStore, pool_label: str, stepped: set[str]
               ) -> Iterable[MigNode]:
    for view in views:
        state = store.state(view.name)
        if state is None or not state.mig_gpus:
            continue
        busy = view.changing or view.name in stepped
        yield MigNode(state, view.labels.get(pool_label, ""), view.config, "pending" if busy else view.state,
                      view.changed_at)


def _write(api: ClusterApi, step: Step, result: Round, dry_run: bool, metrics: LayoutMetrics | None) -> None:
    result.steps.append(step)
    if dry_run:
        return
    try:
        api.patch_node(step.node, step.patch())
    except Exception as error:  # one node's failure must not stop the round; it is retried next round
        result.errors.append(f"{step.node}: {error}")
        log.warning("node %s: could not write the %s step: %s", step.node, step.event or "cordon", error)
        return
    if metrics is not None:
        metrics.count(step)
    if step.event:
        log.info("node %s: layout change %s (%s)", step.node, step.event, step.labels or step.annotations)


def describe(result: Round) -> str:
    lines = [str(result.plan)] if result.plan is not None else []
    lines += [f"  write {s.node}: {s.event or 'keep cordon'} {s.patch()}" for s in result.steps]
    lines += [f"  error {e}" for e in result.errors]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- command line


def add_mig_layouts_parser(commands: Any) -> None:
    add_mig_layouts_arguments(add_command(commands, "mig-layouts", summary=HELP, description=DESCRIPTION,
                                          examples=EXAMPLES))


def add_mig_layouts_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--kubeconfig", help="talk to the API server with this kubeconfig")
    source.add_argument("--in-cluster", action="store_true", help="talk to the API server with the service account")
    parser.add_argument("--dry-run", action="store_true", help="print each round's plan and steps, write nothing")
    parser.add_argument("--once", action="store_true", help="run one round and exit")
    parser.add_argument("--metrics-port", type=int, default=int(env_default("METRICS_PORT", "0") or 0),
                        help="serve Prometheus metrics on this port (default 0: none)")
    parser.set_defaults(func=run_mig_layouts)


def run_mig_layouts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpuguard.k8s.nodes import KubernetesNodes
    from gpuguard.policy.loading import PolicyError
    from gpuguard.web.policy_source import PolicySource

    registry = CollectorRegistry()
    try:
        source = PolicySource(args.policy, registry=registry)
    except (OSError, PolicyError) as error:
        print(f"gpuguard mig-layouts: cannot use the policy: {error}")
        return 2
    api = KubernetesNodes.connect(kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
                                  in_cluster=args.in_cluster)
    metrics = LayoutMetrics(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=registry)
    while True:
        source.check()
        policy = source.policy
        if policy.dynamic_mig.enabled or args.dry_run:
            try:
                result = run_round(api, policy, now=time.time(), dry_run=args.dry_run, metrics=metrics)
            except Exception as error:  # the API server unreachable: try again next round
                log.warning("round failed: %s", error)
            else:
                if args.dry_run or result.steps:
                    print(describe(result), flush=True)
        elif args.once:
            print("dynamicMig.enabled is false in the policy: nothing to do (--dry-run plans anyway)")
        if args.once:
            return 0
        time.sleep(policy.dynamic_mig.interval)


def main(argv: list[str] | None = None) -> int:
    from gpuguard.cli_support import service_main

    return service_main("python -m scheduler_ext.miglayouts", HELP, add_mig_layouts_arguments, run_mig_layouts, argv)


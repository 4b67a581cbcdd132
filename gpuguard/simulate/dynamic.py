"""Replay with waiting pods, optionally with the dynamic-MIG planner changing layouts (`simulate --dynamic-mig`).

As in a cluster, a pod that does not fit on arrival stays Pending and is tried again whenever capacity comes back (a
pod leaves, a layout change ends); it counts as unschedulable only after waiting `patience` seconds. Pending pods are
tried in arrival order; within one retry, a request shape that found no node is not tried again (nothing was freed
in between).

With a planner, every `plan_interval` seconds while MIG pods wait, `gpuguard.policy.migplan.plan` sees the pending
requests and each MIG node's state and `nvidia.com/mig.config`, and its moves are applied as the MIG manager would:
the node takes no new pod for `layout_delay` seconds (the cordon while the state is pending), then the GPUs the move
names get the new layout (`gpuguard.policy.migconfig`, placed by the catalog) and the rest keep theirs and their
pods. Pure and seeded like `engine.replay`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuguard.policy import mig
from gpuguard.policy.gpustate import NodeGpuState, SliceRef, bind, release
from gpuguard.policy.migconfig import DEFAULT_CONFIGS, ConfigEntry, gpu_layouts, placed
from gpuguard.policy.migplan import MigNode, Move, PoolRules, plan
from gpuguard.simulate.engine import Outcome, Picker, stranded
from gpuguard.simulate.model import MIG_CONFIGS, SimCluster, SimPod, mig_node_of

DYNAMIC = "dynamic-mig"


@dataclass(frozen=True, slots=True)
class Dynamics:
    """How the planner acts in a replay."""

    layout_delay: float = 120.0
    """Seconds a layout change keeps the node's GPUs out of use (MIG manager: drain, re-partition, device plugin)."""
    plan_interval: float = 30.0
    cooldown: float = 600.0
    minimum: int = 1
    """Nodes of each pool that stay in each layout they start with (the pool minimum)."""


def pool_of(state: NodeGpuState) -> str:
    return state.product


def pool_rules(cluster: SimCluster, dynamics: Dynamics) -> dict[str, PoolRules]:
    """Per MIG pool (one per product): every named layout of `MIG_CONFIGS`, the starting ones kept at the minimum."""
    pools: dict[str, PoolRules] = {}
    for state in cluster.states:
        if state.name in cluster.mig_configs:
            names = tuple(MIG_CONFIGS[state.product].values())
            started = {cluster.mig_configs[s.name] for s in cluster.states if s.product == state.product
                       and s.name in cluster.mig_configs}
            pools[pool_of(state)] = PoolRules(pool_of(state), names, {n: dynamics.minimum for n in started},
                                              dynamics.cooldown)
    return pools


class _Replay:
    def __init__(self, cluster: SimCluster, trace: Sequence[SimPod], name: str, picker: Picker, *, seed: int,
                 patience: float, dynamics: Dynamics | None) -> None:
        self.cluster, self.trace, self.picker, self.patience, self.dynamics = cluster, trace, picker, patience, dynamics
        self.rnd = random.Random(f"ties-{seed}")
        self.states = {s.name: s for s in cluster.states}
        self.order = [s.name for s in cluster.states]
        self.configs = dict(cluster.mig_configs)
        self.changed_at: dict[str, float] = {}
        self.changing: dict[str, Move] = {}
        self.pools = pool_rules(cluster, dynamics) if dynamics is not None else {}
        self.held: dict[int, tuple[str, tuple[SliceRef, ...]]] = {}
        self.pending: list[SimPod] = []
        self.events: list[tuple[float, int, str, int]] = []
        """(time, order, kind, index): kind `leave` (pod index), `done` (layout change of node position `index`)."""
        self.sequence = 0
        self.now = 0.0
        self.next_plan = 0.0
        self.first_failure: float | None = None
        self.first_mig_failure: float | None = None
        self.outcome = Outcome(name, waits=True)
        self.placements: list[tuple[float, bool]] = []
        self.waited: list[float] = []

    def run(self) -> Outcome:
        for pod in self.trace:
            self._advance(pod.arrival)
            self._give_up(pod.arrival)
            self.now = pod.arrival
            if not self._try(pod, pod.arrival):
                self.pending.append(pod)
        self._advance(float("inf"))
        self._give_up(float("inf"))
        return self._finish()

    def _advance(self, until: float) -> None:
        """Handle departures, ends of layout changes and planning rounds up to `until`."""
        while True:
            event_at = self.events[0][0] if self.events else float("inf")
            plan_at = float("inf")
            if self.dynamics is not None and self._mig_waiting():
                plan_at = max(self.next_plan, self.now)
            at = min(event_at, plan_at)
            if at > until or at == float("inf"):
                return
            self._give_up(at)
            self.now = at
            if plan_at <= event_at:
                assert self.dynamics is not None
                self._plan(at)
                self.next_plan = at + self.dynamics.plan_interval
                continue
            _, _, kind, index = heapq.heappop(self.events)
            if kind == "leave":
                node, slices = self.held.pop(index)
                self.states[node] = release(self.states[node], self.trace[index].request, slices)
            else:
                self._finish_change(self.order[index], at)
            self._retry(at)

    def _mig_waiting(self) -> bool:
        return any(p.kind == "mig" for p in self.pending)

    def _push(self, at: float, kind: str, index: int) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, index))

    def _try(self, pod: SimPod, now: float) -> bool:
        usable = [self.states[n] for n in self.order if n not in self.changing]
        chosen = self.picker(pod.request, usable, self.rnd, ())
        if chosen is None:
            return False
        binding = bind(chosen, pod.request)
        self.states[chosen.name] = binding.state
        self.held[pod.index] = (chosen.name, binding.slices)
        self._push(now + pod.lifetime, "leave", pod.index)
        self.placements.append((now, pod.kind == "mig"))
        self.outcome.placed += 1
        if pod.kind == "llm":
            self.outcome.whole_gpus_placed += pod.gpus
            self.outcome.placed_on_busy += [self.cluster.background.get(chosen.name, 0.0)] * pod.gpus
        if pod.kind == "mig":
            self.waited.append(now - pod.arrival)
        return True

    def _retry(self, now: float) -> None:
        failed: set[object] = set()
        still: list[SimPod] = []
        for pod in self.pending:
            shape = (pod.request.resources, pod.request.product, pod.request.product_terms)
            if shape in failed or not self._try(pod, now):
                failed.add(shape)
                still.append(pod)
        self.pending = still

    def _give_up(self, now: float) -> None:
        keep: list[SimPod] = []
        for pod in self.pending:
            if now - pod.arrival >= self.patience:
                at = pod.arrival + self.patience
                self.outcome.unschedulable += 1
                if self.first_failure is None:
                    self.outcome.stranded_gpus, self.outcome.stranded_mig_slots = stranded(self.states.values())
                if self.first_failure is None or at < self.first_failure:
                    self.first_failure = at
                if pod.kind == "mig" and (self.first_mig_failure is None or at < self.first_mig_failure):
                    self.first_mig_failure = at
            else:
                keep.append(pod)
        self.pending = keep

    def _plan(self, now: float) -> None:
        nodes = [MigNode(self.states[n], pool_of(self.states[n]), self.configs[n],
                         "pending" if n in self.changing else "success", self.changed_at.get(n))
                 for n in self.order if n in self.configs]
        made = plan([p.request for p in self.pending if p.kind == "mig"], nodes, self.pools, now=now)
        for move in made.moves:
            self.changing[move.node] = move
            self.configs[move.node] = move.to_config
            self.outcome.layout_changes += 1
            assert self.dynamics is not None
            self._push(now + self.dynamics.layout_delay, "done", self.order.index(move.node))

    def _finish_change(self, node: str, now: float) -> None:
        move = self.changing.pop(node)
        self.states[node] = relaid(self.states[node], move)
        self.changed_at[node] = now

    def _finish(self) -> Outcome:
        o = self.outcome
        o.placed_before_first_failure = sum(1 for at, _ in self.placements
                                            if self.first_failure is None or at < self.first_failure)
        o.mig_placed = sum(1 for _, m in self.placements if m)
        o.mig_placed_before_first_failure = sum(1 for at, m in self.placements if m and (
            self.first_mig_failure is None or at < self.first_mig_failure))
        o.mig_pending_total = sum(self.waited)
        return o


def relaid(state: NodeGpuState, move: Move,
           configs: Mapping[str, tuple[ConfigEntry, ...]] = DEFAULT_CONFIGS) -> NodeGpuState:
    """The node once the MIG manager has applied `move`: the GPUs it names get the new layout, no pod on them; the
    others keep their instances and which of them pods hold."""
    model = mig.model_for_product(state.product)
    assert model is not None and state.held is not None
    target = gpu_layouts(move.to_config, model, len(state.mig_gpus), configs)
    assert target is not None, f"{move.to_config} does not apply to {state.name}"
    layouts = [placed(model, target[i]) if i in move.gpus else gpu.slices for i, gpu in enumerate(state.mig_gpus)]
    held = [(False,) * len(layouts[i] or ()) if i in move.gpus else flags for i, flags in enumerate(state.held)]
    return mig_node_of(state.name, state.product, [slices or () for slices in layouts], held)


def replay_waiting(cluster: SimCluster, trace: Sequence[SimPod], name: str, picker: Picker, *, seed: int,
                   patience: float, dynamics: Dynamics | None = None) -> Outcome:
    """Replay where pods wait up to `patience` seconds; with `dynamics`, the planner changes MIG layouts."""
    return _Replay(cluster, trace, name, picker, seed=seed, patience=patience, dynamics=dynamics).run()

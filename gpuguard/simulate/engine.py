"""Replay a trace against a scheduler and measure how well it packs.

Three schedulers see the same cluster and the same trace:
- `gpuguard`: the extender's own pure code (`filter_nodes`, then `score_nodes` with the policy's scheduling section,
  utilization weighting included), highest score wins;
- `default`: what kube-scheduler does without gpuguard: resource fit, then the LeastAllocated score (the node left
  with the largest free share of what the pod asks for; the default profile spreads);
- `best-fit`: an offline best fit: among the nodes that fit, the one the pod leaves with the fewest free devices of
  its kind (for MIG, the fewest free instances of its profile, then fewest free slots on the chosen GPU).
Ties go to a seeded random pick among the best, as kube-scheduler breaks them. Departures release what the pod held.
For the pods of a multi-node group, gpuguard also re-ranks by the group's NVLink clique and product when
`scheduling.groupPlacement` is enabled (`gpuguard.policy.grouping`, as the extender does), and the outcome counts the
groups that ended up split across cliques. Pure apart from an optional progress callback.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gpuguard.policy.gpustate import GpuRequest, NodeGpuState, SliceRef, bind, release
from gpuguard.policy.grouping import grouped_scores, placement_of, tiers_for
from gpuguard.policy.model import Scheduling
from gpuguard.policy.scoring import fit_key, fit_refusal, filter_nodes, score_nodes
from gpuguard.simulate.model import CLIQUE, GPU, T4_SHARED, SimCluster, SimPod

Picker = Callable[[GpuRequest, list[NodeGpuState], random.Random, Sequence[str]], NodeGpuState | None]
"""(request, candidate states, tie-breaking random, nodes of the pod's group's bound pods) -> the chosen node."""
Progress = Callable[[int, int], None]
SCHEDULERS = ("gpuguard", "default", "best-fit")


@dataclass
class Outcome:
    scheduler: str
    placed_before_first_failure: int = 0
    placed: int = 0
    unschedulable: int = 0
    stranded_gpus: int = 0
    """At the first unschedulable pod: free whole GPUs on H100/A100 nodes already partly used (no 8-GPU pod fits)."""
    stranded_mig_slots: int = 0
    """At the same moment: memory slots (1/8 GPU each) of free MIG instances on GPUs that already hold one."""
    whole_gpus_placed: int = 0
    """GPUs taken by the whole-GPU (LLM) pods placed, over the whole trace."""
    placed_by_kind: dict[str, int] = field(default_factory=dict)
    """Pods placed over the trace per kind: `1-GPU` ... `8-GPU` for the whole-GPU pods, `mig`, `dev`."""
    placed_on_busy: list[float] = field(default_factory=list)
    waits: bool = False
    """Pods waited (up to a patience) instead of being dropped on arrival; the MIG fields below are then counted."""
    mig_placed_before_first_failure: int = 0
    """MIG pods placed before the first MIG pod went unschedulable."""
    mig_placed: int = 0
    mig_pending_total: float = 0.0
    """Seconds the placed MIG pods spent Pending, summed."""
    layout_changes: int = 0
    """Background utilization of each node a whole-GPU pod went to, one entry per GPU it took."""
    groups: int = 0
    """Multi-node groups in the trace."""
    groups_placed: int = 0
    """Groups all of whose pods were placed."""
    groups_split: int = 0
    """Groups placed whole whose pods ended up in more than one NVLink clique."""

    @property
    def mean_mig_pending(self) -> float:
        return self.mig_pending_total / self.mig_placed if self.mig_placed else 0.0

    @property
    def mean_utilization_of_used(self) -> float:
        return sum(self.placed_on_busy) / len(self.placed_on_busy) if self.placed_on_busy else 0.0


def pickers(cluster: SimCluster, scheduling: Scheduling) -> dict[str, Picker]:
    awareness = scheduling.group_placement

    def gpuguard(request: GpuRequest, states: list[NodeGpuState], rnd: random.Random,
                 members: Sequence[str]) -> NodeGpuState | None:
        feasible, _ = filter_nodes(request, states, utilization=cluster.utilization, scheduling=scheduling, now=0.0)
        if not feasible:
            return None
        scores = score_nodes(request, feasible, utilization=cluster.utilization, scheduling=scheduling, now=0.0)
        placement = placement_of(members, cluster.labels.get, topology_key=awareness.topology_key) \
            if members and awareness.enabled else None
        if placement is not None:
            scores = grouped_scores(scores, tiers_for(placement, [s.name for s in feasible], cluster.labels.get))
        return _best(feasible, scores, rnd, highest=True)

    def default(request: GpuRequest, states: list[NodeGpuState], rnd: random.Random,
                members: Sequence[str]) -> NodeGpuState | None:
        fits = _fits(request, states)
        shares = [sum((s.free_of(r) - n) / max(s.allocatable.get(r, 1), 1) for r, n in request.resources)
                  for s in fits]
        return _best(fits, shares, rnd, highest=True) if fits else None

    def best_fit(request: GpuRequest, states: list[NodeGpuState], rnd: random.Random,
                 members: Sequence[str]) -> NodeGpuState | None:
        fits = _fits(request, states)
        keys = [fit_key(request, s) for s in fits]
        return _best(fits, keys, rnd, highest=False) if fits else None

    return {"gpuguard": gpuguard, "default": default, "best-fit": best_fit}


def _fits(request: GpuRequest, states: list[NodeGpuState]) -> list[NodeGpuState]:
    return [s for s in states if fit_refusal(request, s) is None]


def _best(states: Sequence[NodeGpuState], values: Sequence[object], rnd: random.Random, *, highest: bool) -> NodeGpuState:
    target = max(values) if highest else min(values)  # type: ignore[type-var]  # ints, floats or tuples of them
    return rnd.choice([s for s, v in zip(states, values, strict=True) if v == target])


def replay(cluster: SimCluster, trace: Sequence[SimPod], name: str, picker: Picker, *, seed: int,
           progress: Progress | None = None) -> Outcome:
    rnd = random.Random(f"ties-{seed}")
    states = {s.name: s for s in cluster.states}
    order = [s.name for s in cluster.states]
    held: dict[int, tuple[str, tuple[SliceRef, ...]]] = {}
    departures: list[tuple[float, int]] = []
    outcome = Outcome(name)
    first_failure_seen = False
    bound: dict[str, dict[int, str]] = {}
    """group -> pod index -> node, for the group's pods that are bound now."""
    placed_in: dict[str, list[str]] = {}
    """group -> the node of each of its pods placed, over the whole trace."""
    for done, pod in enumerate(trace, 1):
        while departures and departures[0][0] <= pod.arrival:
            _, index = heapq.heappop(departures)
            node, slices = held.pop(index)
            states[node] = release(states[node], trace[index].request, slices)
            bound.get(trace[index].group, {}).pop(index, None)
        members = list(bound.get(pod.group, {}).values()) if pod.group else []
        chosen = picker(pod.request, [states[n] for n in order], rnd, members)
        if chosen is not None and pod.group:
            bound.setdefault(pod.group, {})[pod.index] = chosen.name
            placed_in.setdefault(pod.group, []).append(chosen.name)
        if chosen is None:
            outcome.unschedulable += 1
            if not first_failure_seen:
                first_failure_seen = True
                outcome.stranded_gpus, outcome.stranded_mig_slots = stranded(states.values())
        else:
            binding = bind(chosen, pod.request)
            states[chosen.name] = binding.state
            held[pod.index] = (chosen.name, binding.slices)
            heapq.heappush(departures, (pod.arrival + pod.lifetime, pod.index))
            outcome.placed += 1
            kind = f"{pod.gpus}-GPU" if pod.kind == "llm" else pod.kind
            outcome.placed_by_kind[kind] = outcome.placed_by_kind.get(kind, 0) + 1
            if not first_failure_seen:
                outcome.placed_before_first_failure += 1
            if pod.kind == "llm":
                outcome.whole_gpus_placed += pod.gpus
                outcome.placed_on_busy += [cluster.background.get(chosen.name, 0.0)] * pod.gpus
        if progress is not None:
            progress(done, len(trace))
    if not first_failure_seen:
        outcome.stranded_gpus, outcome.stranded_mig_slots = stranded(states.values())
    _count_groups(outcome, trace, placed_in, cluster)
    return outcome


def _count_groups(outcome: Outcome, trace: Sequence[SimPod], placed_in: dict[str, list[str]],
                  cluster: SimCluster) -> None:
    sizes = Counter(p.group for p in trace if p.group)
    outcome.groups = len(sizes)
    for group, size in sizes.items():
        nodes = placed_in.get(group, [])
        if len(nodes) == size:
            outcome.groups_placed += 1
            cliques = {cluster.labels.get(n, {}).get(CLIQUE, n) for n in nodes}
            outcome.groups_split += int(len(cliques) > 1)


def stranded(states: Iterable[NodeGpuState]) -> tuple[int, int]:
    """Free capacity that fragmentation makes hard to use (see `Outcome`)."""
    gpus = slots = 0
    for state in states:
        total = state.allocatable.get(GPU, 0)
        free = state.free_of(GPU)
        if total and state.product != T4_SHARED and 0 < free < total:
            gpus += free
        assert state.held is not None
        for gpu, flags in zip(state.mig_gpus, state.held, strict=True):
            if any(flags):
                slots += sum(piece.size for piece, on in zip(gpu.slices, flags, strict=True) if not on)
    return gpus, slots

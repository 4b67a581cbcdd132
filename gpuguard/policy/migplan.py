"""Which MIG nodes to move to which of the MIG manager's layouts so that waiting pods fit.

Input: the pending pods' requests, each MIG node (its `NodeGpuState` with the instances pods hold, its pool, its
`nvidia.com/mig.config` and `nvidia.com/mig.config.state` labels, when its layout last changed), the pools' rules
(allowed layouts, a minimum number of nodes per layout, a cool-down per node) and the mig-parted configuration. Output:
a `Plan`, a value that prints as the moves and why.

The MIG manager applies a name to a whole node, so a move sets one node's label. A move is allowed only when
- the node is in a pool with rules, its model is catalogued and the name applies to it (`migconfig.layout`),
- no layout change of it is under way (state `pending` or `rebooting`), the MIG manager's last change did not fail
  (`failed`), and its cool-down since the last change has passed,
- every GPU that holds a pod already has exactly the new layout (the MIG manager would leave it as it is); only GPUs
  no pod holds are re-partitioned,
- the pool keeps at least its minimum of nodes in the layout the node leaves.
Among the allowed moves the planner takes, greedily, the one that lets the most waiting pods fit (counting what the
free instances already take), ties to the fewest GPUs re-partitioned, then the node name, and repeats with that
move applied until no move lets one more pod fit. Each node moves at most once per plan.

Counting which waiting pods fit is a greedy packing of pod shapes (same MIG resource, count and product constraint)
into the free instances of the nodes their product constraint admits, larger requests first: the planner's own
estimate, which the extender's placement then makes real. Pure: no I/O, no clock (`now` is passed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpuguard.policy import mig
from gpuguard.policy.catalog import MigCatalog
from gpuguard.policy.gpustate import GpuRequest, NodeGpuState, product_refusal
from gpuguard.policy.migconfig import DEFAULT_CONFIGS, ConfigEntry, Layout, gpu_layouts

CHANGING = frozenset({"pending", "rebooting"})
"""`nvidia.com/mig.config.state` values while the MIG manager is applying a layout."""


@dataclass(frozen=True, slots=True)
class PoolRules:
    """One node pool's dynamic-MIG rules."""

    name: str
    layouts: tuple[str, ...]
    """mig-parted names the planner may move this pool's nodes to."""
    minimum: Mapping[str, int] = field(default_factory=dict)
    """Per name: nodes of the pool that must stay in it (a node already there never leaves below this)."""
    cooldown: float = 600.0
    """Seconds after a node's last layout change before it may change again."""


@dataclass(frozen=True, slots=True)
class MigNode:
    """A MIG node as the planner sees it."""

    state: NodeGpuState
    pool: str
    config: str = ""
    """Its `nvidia.com/mig.config` label ("" when none)."""
    config_state: str = ""
    """Its `nvidia.com/mig.config.state` label: pending, rebooting, success, failed ("" when none)."""
    changed_at: float | None = None
    """Unix seconds of its last layout change, None when not known to have changed."""

    @property
    def name(self) -> str:
        return self.state.name


@dataclass(frozen=True, slots=True)
class Move:
    node: str
    pool: str
    from_config: str
    to_config: str
    gpus: tuple[int, ...]
    """Positions (in the node's MIG GPUs) of the GPUs the MIG manager re-partitions; none of them holds a pod."""
    fits: int
    """Waiting pods that fit after this move and not before it (given the moves before it)."""
    free_after: Mapping[str, int]
    """Free instances per MIG resource on the node once the MIG manager has applied the layout."""


@dataclass(frozen=True, slots=True)
class Plan:
    moves: tuple[Move, ...]
    waiting: int
    """Pending pods that ask for MIG."""
    fit_before: int
    """Of them, those today's free instances can take."""
    fit_after: int
    """Those that fit once every move is applied."""
    held_back: tuple[tuple[str, str], ...] = ()
    """(node, why) for the pool nodes no move may touch now."""

    def __str__(self) -> str:
        lines = [f"{self.waiting} pending MIG pods: {self.fit_before} fit the free instances today, "
                 f"{self.fit_after} after {len(self.moves)} layout change(s)"]
        for m in self.moves:
            free = ", ".join(f"{mig.profile_from_resource(r)} x{n}" for r, n in sorted(m.free_after.items()) if n)
            lines.append(f"  {m.node} ({m.pool}): {m.from_config or '(no label)'} -> {m.to_config}, "
                         f"GPUs {list(m.gpus)} re-partitioned, +{m.fits} pods fit; free after: {free or 'none'}")
        lines += [f"  held back: {node}: {why}" for node, why in self.held_back]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Shape:
    resource: str
    count: int
    request: GpuRequest
    pods: int


def mig_demand(pending: Sequence[GpuRequest]) -> list[_Shape]:
    """Pending MIG pods grouped by shape, larger requests first (a request for whole GPUs too is not a MIG shape)."""
    groups: dict[tuple[object, ...], list[GpuRequest]] = {}
    for request in pending:
        if len(request.resources) != 1 or request.problem:
            continue
        resource, count = request.resources[0]
        if mig.profile_from_resource(resource) is None:
            continue
        groups.setdefault((resource, count, request.product, request.product_terms), []).append(request)
    shapes = [_Shape(r[0].resources[0][0], r[0].resources[0][1], r[0], len(r)) for r in groups.values()]
    return sorted(shapes, key=lambda s: (-s.count * _slices(s.resource), s.resource, str(s.request.product)))


def _slices(resource: str) -> int:
    profile = mig.profile_from_resource(resource) or ""
    return int(profile.split("g.", 1)[0]) if profile[:1].isdigit() else 1


def fitting(shapes: Sequence[_Shape], free: Mapping[str, Mapping[str, int]], products: Mapping[str, str]) -> int:
    """How many of the pods fit the free instances, packed greedily (see module)."""
    left = {node: dict(counts) for node, counts in free.items()}
    placed = 0
    for shape in shapes:
        want = shape.pods
        for node, counts in left.items():
            if want == 0:
                break
            have = counts.get(shape.resource, 0) // shape.count
            if have and product_refusal(shape.request, products[node]) is None:
                take = min(have, want)
                counts[shape.resource] -= take * shape.count
                want -= take
                placed += take
    return placed


def free_instances(state: NodeGpuState) -> dict[str, int]:
    return {r: n for r, n in state.free.items() if mig.profile_from_resource(r) is not None}


def busy_gpus(state: NodeGpuState) -> list[int]:
    assert state.held is not None
    return [i for i, flags in enumerate(state.held) if any(flags)]


def after_change(state: NodeGpuState, target: Sequence[Layout]) -> tuple[tuple[int, ...], dict[str, int]] | None:
    """The GPUs re-partitioned and the node's free instances once the MIG manager applies `target` (a layout per
    GPU); None when a GPU that holds a pod would have to change."""
    assert state.held is not None
    changed: list[int] = []
    free: Counter[str] = Counter()
    for i, (gpu, flags) in enumerate(zip(state.mig_gpus, state.held, strict=True)):
        wanted = Counter({p: n for p, n in target[i].items() if n})
        if Counter(s.profile for s in gpu.slices) == wanted:
            free.update(mig.mig_resource_name(s.profile) for s, h in zip(gpu.slices, flags, strict=True) if not h)
        elif any(flags):
            return None
        else:
            changed.append(i)
            free.update({mig.mig_resource_name(p): n for p, n in wanted.items()})
    return tuple(changed), dict(free)


def plan(
    pending: Sequence[GpuRequest],
    nodes: Sequence[MigNode],
    pools: Mapping[str, PoolRules],
    *,
    now: float,
    configs: Mapping[str, tuple[ConfigEntry, ...]] = DEFAULT_CONFIGS,
    catalog: MigCatalog = mig.BUILTIN,
) -> Plan:
    shapes = mig_demand(pending)
    waiting = sum(s.pods for s in shapes)
    usable = [n for n in nodes if n.config_state not in CHANGING]
    free = {n.name: free_instances(n.state) for n in usable}
    products = {n.name: n.state.product for n in usable}
    fit = before = fitting(shapes, free, products)
    held_back: list[tuple[str, str]] = []
    candidates: list[MigNode] = []
    for node in nodes:
        why = _held_back(node, pools, now)
        if why:
            held_back.append((node.name, why))
        elif node.pool in pools:
            candidates.append(node)
    in_layout = Counter((n.pool, n.config) for n in nodes)
    moves: list[Move] = []
    while shapes and fit < waiting and candidates:
        best: tuple[tuple[int, int, str], Move, MigNode] | None = None
        for node in candidates:
            for move in _moves(node, pools[node.pool], in_layout, configs, catalog):
                gained = fitting(shapes, {**free, node.name: dict(move.free_after)}, products) - fit
                rank = (-gained, len(move.gpus), node.name)
                if gained > 0 and (best is None or rank < best[0]):
                    best = (rank, Move(move.node, move.pool, move.from_config, move.to_config, move.gpus, gained,
                                       move.free_after), node)
        if best is None:
            break
        _, move, node = best
        moves.append(move)
        fit += move.fits
        free[node.name] = dict(move.free_after)
        in_layout[(node.pool, node.config)] -= 1
        in_layout[(node.pool, move.to_config)] += 1
        candidates.remove(node)
    return Plan(tuple(moves), waiting, before, fit, tuple(held_back))


def _held_back(node: MigNode, pools: Mapping[str, PoolRules], now: float) -> str:
    rules = pools.get(node.pool)
    if rules is None:
        return ""
    if node.config_state in CHANGING:
        return f"layout change under way (nvidia.com/mig.config.state={node.config_state})"
    if node.config_state == "failed":
        return "the MIG manager failed its last change (nvidia.com/mig.config.state=failed): an admin must look"
    if node.changed_at is not None and now - node.changed_at < rules.cooldown:
        return f"cool-down: changed {now - node.changed_at:.0f} s ago, {rules.cooldown:g} s must pass"
    return ""


def _moves(node: MigNode, rules: PoolRules, in_layout: Counter[tuple[str, str]],
           configs: Mapping[str, tuple[ConfigEntry, ...]], catalog: MigCatalog) -> list[Move]:
    model = catalog.model_for_product(node.state.product)
    if model is None or not node.state.mig_gpus:
        return []
    if node.config and in_layout[(node.pool, node.config)] - 1 < rules.minimum.get(node.config, 0):
        return []
    found: list[Move] = []
    for name in rules.layouts:
        target = gpu_layouts(name, model, len(node.state.mig_gpus), configs)
        if name == node.config or target is None:
            continue
        change = after_change(node.state, target)
        if change is not None and change[0]:
            found.append(Move(node.name, node.pool, node.config, name, change[0], 0, change[1]))
    return found

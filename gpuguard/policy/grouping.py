"""Group-aware placement: keep the pods of one serving group on one GPU product and inside one topology domain.

A multi-node model server (a LeaderWorkerSet group of an LLMInferenceService, or the head and workers of a multi-node
InferenceService; `gpuguard.policy.workload.group_of`) runs collectives between its pods, so each of them should land
where the group's pods already run: the same `nvidia.com/gpu.product`, and the same value of the policy's topology
label (`scheduling.groupPlacement.topologyKey`: the NVLink clique `nvidia.com/gpu.clique` GPU Feature Discovery sets
on multi-node NVLink systems, a rack label, `topology.kubernetes.io/zone`...).

How the score changes, exactly (`grouped_scores`): when the pod belongs to a group with pods already bound, its
domain is the topology value and its product the GPU product most of those pods' nodes have (ties: the first in
name order). Each candidate gets a tier: 2 when it has both, 1 when it has the product only (or no domain is
known), 0 otherwise. If the candidates all share one tier, the scores stay as they are. Otherwise the nodes are
ordered by (tier, fit-and-utilization score), both descending, and each distinct pair takes the next level down from
10 (floored at 0): every node of the group's domain scores above every node outside it, and inside a tier the nodes
keep exactly the order of their fit-and-utilization scores, so best fit within the domain is never undone. Nodes
the extender does not know keep 0. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

PRODUCT_LABEL = "nvidia.com/gpu.product"
MAX_SCORE = 10
UNKNOWN_TIER = -1

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class GroupPlacement:
    """Where a group's bound pods run: the domain and product most of them share."""

    domain: str | None
    """The topology label's value on most members' nodes; None when no member's node has the label."""
    product: str | None
    """The GPU product of most members' nodes; None when none is labelled."""
    topology_key: str
    members: int


def _most_common(values: Iterable[str]) -> str | None:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], v)) if counts else None


def placement_of(
    member_nodes: Iterable[str], labels_of: Callable[[str], Labels | None], *, topology_key: str
) -> GroupPlacement | None:
    """The placement of a group from the nodes its bound pods run on (one entry per pod); None when none is known."""
    known = [labels for node in member_nodes if (labels := labels_of(node)) is not None]
    if not known:
        return None
    domain = _most_common(v for labels in known if topology_key and (v := labels.get(topology_key)))
    product = _most_common(v for labels in known if (v := labels.get(PRODUCT_LABEL)))
    return GroupPlacement(domain, product, topology_key, len(known))


def tier(placement: GroupPlacement, labels: Labels | None) -> int:
    """2: the group's domain and product; 1: its product only (or no domain known); 0: neither; -1: unknown node."""
    if labels is None:
        return UNKNOWN_TIER
    same_product = placement.product is None or labels.get(PRODUCT_LABEL) == placement.product
    if not same_product:
        return 0
    if placement.domain is None:
        return 1
    return 2 if labels.get(placement.topology_key) == placement.domain else 1


def grouped_scores(scores: Sequence[int], tiers: Sequence[int]) -> list[int]:
    """The scores re-ranked tier first (see the module docstring); unchanged when the candidates share one tier."""
    known = [t for t in tiers if t != UNKNOWN_TIER]
    if len(set(known)) <= 1:
        return list(scores)
    keys = sorted({(t, s) for t, s in zip(tiers, scores, strict=True) if t != UNKNOWN_TIER}, reverse=True)
    level = {key: max(0, MAX_SCORE - i) for i, key in enumerate(keys)}
    return [0 if t == UNKNOWN_TIER else level[(t, s)] for t, s in zip(tiers, scores, strict=True)]


def tiers_for(placement: GroupPlacement, names: Sequence[str], labels_of: Callable[[str], Labels | None]) -> list[int]:
    return [tier(placement, labels_of(name)) for name in names]

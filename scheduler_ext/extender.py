"""The extender's decisions, in protocol terms: ExtenderArgs plus node GPU states in, filter result or scores out.

A pod's request is read with its DRA claims (`claims`: the claim and template specs the cache knows), so a claim pod
is judged by the devices its claims ask for. Pure: node states come from the caller (the cache's `GpuIndex` for
NodeNames, states built from the request for full Nodes), `now` is passed in, and nothing is logged or reserved. The
math lives in `gpuguard.policy.scoring` (and its indexed twin `gpuguard.policy.gpuindex`, for thousands of names);
this module maps it onto the wire: kept nodes in request order (`NodeNames` or the original `Nodes`), refusals split
into `FailedNodes` (not enough free GPUs: evicting lower-priority pods frees them, so kube-scheduler's preemption may
consider the node) and `FailedAndUnresolvableNodes` (wrong product, no such resource, GPUs too busy, a node the cache
does not know yet: evicting pods cures none of these, and kube-scheduler's DefaultPreemption skips such nodes), and a
score for every requested host (0 for unknown ones). The extender implements no `preemptVerb`: the in-tree
NodeResourcesFit sees the same GPU and MIG resources in the node's allocatable, so its dry run already frees what a
FailedNodes refusal lacks. A pod of a serving group whose other pods are bound has its scores re-ranked to keep the
group on one product and in one topology domain (`gpuguard.policy.grouping`; the caller passes each candidate's tier).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuguard.contracts.extender import ExtenderArgs, ExtenderFilterResult
from gpuguard.policy.gpuindex import GpuIndex, filter_names, score_names
from gpuguard.policy.dra import EMPTY_BOOK, ClaimBook, pod_request
from gpuguard.policy.grouping import grouped_scores
from gpuguard.policy.gpustate import GpuRequest, NodeGpuState, NodeUtilization
from gpuguard.policy.model import Scheduling
from gpuguard.policy.scoring import Refusal, filter_nodes, score_nodes

UNKNOWN_NODE = "not in gpuguard's node cache yet (just added, or the cache is still syncing); retried next cycle"


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    result: ExtenderFilterResult
    denials: Counter[str]
    """Refused nodes by cause (product, no-resource, insufficient, utilization, unknown-node)."""


def decide_filter(
    args: ExtenderArgs,
    states: Sequence[NodeGpuState | None],
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
    claims: ClaimBook = EMPTY_BOOK,
) -> FilterOutcome:
    """Filter over states resolved by the caller (None: unknown node), for full-Node requests."""
    request = pod_request(args.pod, claims)
    if request.problem:
        return _cannot_judge(request)
    names = args.candidate_names
    known = [s for s in states if s is not None]
    passed, refusals = filter_nodes(request, known, utilization=utilization, scheduling=scheduling, now=now)
    unknown = [name for name, s in zip(names, states) if s is None]
    everything = len(passed) == len(names)
    kept = set() if everything else {s.name for s in passed}
    if args.nodes is not None:
        nodes = args.nodes if everything else args.nodes.subset(i for i, n in enumerate(names) if n in kept)
        return _outcome(ExtenderFilterResult(nodes=nodes), refusals, unknown)
    kept_names = list(names) if everything else [n for n in names if n in kept]
    return _outcome(ExtenderFilterResult(node_names=kept_names), refusals, unknown)


def decide_filter_names(
    args: ExtenderArgs,
    index: GpuIndex,
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
    claims: ClaimBook = EMPTY_BOOK,
) -> FilterOutcome:
    """Filter for NodeNames requests, answered from the cache's index."""
    request = pod_request(args.pod, claims)
    if request.problem:
        return _cannot_judge(request)
    kept, refusals, unknown = filter_names(
        request, args.node_names or [], index, utilization=utilization, scheduling=scheduling, now=now
    )
    return _outcome(ExtenderFilterResult(node_names=kept), refusals, unknown)


def _cannot_judge(request: GpuRequest) -> FilterOutcome:
    return FilterOutcome(ExtenderFilterResult(error=f"gpuguard cannot judge this pod: {request.problem}"), Counter())


def _outcome(result: ExtenderFilterResult, refusals: Sequence[Refusal], unknown: Sequence[str]) -> FilterOutcome:
    failed: dict[str, str] = {}
    unresolvable = {name: UNKNOWN_NODE for name in unknown}
    denials: Counter[str] = Counter({"unknown-node": len(unresolvable)} if unresolvable else {})
    for refusal in refusals:
        (failed if refusal.resolvable else unresolvable)[refusal.node] = refusal.reason
        denials[refusal.cause] += 1
    result = result.model_copy(update={"failed_nodes": failed, "failed_and_unresolvable_nodes": unresolvable})
    return FilterOutcome(result, denials)


def decide_priorities(
    args: ExtenderArgs,
    states: Sequence[NodeGpuState | None],
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
    tiers: Sequence[int] | None = None,
    claims: ClaimBook = EMPTY_BOOK,
) -> tuple[list[str], list[int]]:
    """(hosts, scores) in request order; unknown nodes and pods without GPU requests score 0. `tiers` (one per
    candidate, `gpuguard.policy.grouping.tier`): re-rank for the pod's serving group."""
    names = args.candidate_names
    request = pod_request(args.pod, claims)
    positions = [i for i, s in enumerate(states) if s is not None]
    known = [s for s in states if s is not None]
    scored = score_nodes(request, known, utilization=utilization, scheduling=scheduling, now=now)
    if len(known) == len(names):
        return names, _grouped(scored, tiers)
    scores = [0] * len(names)
    for i, score in zip(positions, scored):
        scores[i] = score
    return names, _grouped(scores, tiers)


def _grouped(scores: list[int], tiers: Sequence[int] | None) -> list[int]:
    return scores if tiers is None else grouped_scores(scores, tiers)


def decide_priorities_names(
    args: ExtenderArgs,
    index: GpuIndex,
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
    tiers: Sequence[int] | None = None,
    claims: ClaimBook = EMPTY_BOOK,
) -> tuple[list[str], list[int]]:
    """Prioritize for NodeNames requests, answered from the cache's index (unknown nodes score 0)."""
    names = args.node_names or []
    request = pod_request(args.pod, claims)
    scores = score_names(request, names, index, utilization=utilization, scheduling=scheduling, now=now)
    return names, _grouped(scores, tiers)

"""The extender's decisions, in protocol terms: ExtenderArgs plus node GPU states in, filter result or scores out.

Pure: the states are resolved by the caller (from the cache for NodeNames, from the request for full Nodes), `now` is
passed in, and nothing is logged or reserved. The math lives in `gpuguard.policy.scoring`; this module maps it onto the
wire: kept nodes in request order (`NodeNames` or the original `Nodes`), refusals split into `FailedNodes` (preemption
or time may help) and `FailedAndUnresolvableNodes` (wrong product, no such resource), nodes the cache does not know
refused with a reason that says so, and a score for every requested host (0 for unknown ones).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuguard.contracts.extender import ExtenderArgs, ExtenderFilterResult
from gpuguard.policy.gpustate import GpuRequest, NodeGpuState, NodeUtilization, gpu_request
from gpuguard.policy.model import Scheduling
from gpuguard.policy.scoring import filter_nodes, score_nodes

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
) -> FilterOutcome:
    request = gpu_request(args.pod)
    if request.problem:
        return FilterOutcome(ExtenderFilterResult(error=f"gpuguard cannot judge this pod: {request.problem}"), Counter())
    names = args.candidate_names
    known = [s for s in states if s is not None]
    passed, refusals = filter_nodes(request, known, utilization=utilization, scheduling=scheduling, now=now)
    failed = {name: UNKNOWN_NODE for name, s in zip(names, states) if s is None}
    denials: Counter[str] = Counter({"unknown-node": len(failed)} if failed else {})
    unresolvable: dict[str, str] = {}
    for refusal in refusals:
        (failed if refusal.resolvable else unresolvable)[refusal.node] = refusal.reason
        denials[refusal.cause] += 1
    kept = {s.name for s in passed}
    if args.nodes is not None:
        nodes = args.nodes.subset(i for i, name in enumerate(names) if name in kept)
        result = ExtenderFilterResult(nodes=nodes, failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable)
    else:
        kept_names = [name for name in names if name in kept]
        result = ExtenderFilterResult(
            node_names=kept_names, failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable
        )
    return FilterOutcome(result, denials)


def decide_priorities(
    args: ExtenderArgs,
    states: Sequence[NodeGpuState | None],
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
) -> tuple[list[str], list[int]]:
    """(hosts, scores) in request order; unknown nodes and pods without GPU requests score 0."""
    names = args.candidate_names
    request: GpuRequest = gpu_request(args.pod)
    positions = [i for i, s in enumerate(states) if s is not None]
    known = [s for s in states if s is not None]
    scored = score_nodes(request, known, utilization=utilization, scheduling=scheduling, now=now)
    if len(known) == len(names):
        return names, scored
    scores = [0] * len(names)
    for i, score in zip(positions, scored):
        scores[i] = score
    return names, scores

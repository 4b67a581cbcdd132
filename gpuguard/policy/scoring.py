"""Filter and prioritize: which nodes can take a GPU pod, and how well each one fits it.

Both take the pod's `GpuRequest`, the candidate nodes' `NodeGpuState`s, the GPU utilization known per node and the
policy's `scheduling` section, and return plain values; the extender wraps them in the kube-scheduler protocol and a
replay can call them directly. Pure: no I/O, no clock (callers pass `now`, unix seconds), no logging.

Filter refuses a node, with a one-line reason, when
- its `nvidia.com/gpu.product` does not match the pod's selector or required node affinity (unresolvable),
- its GPUs are time-sliced or MPS shares and the pod's required node affinity excludes those (unresolvable),
- it has none of a requested GPU resource, or not enough of it free (free = allocatable minus the requests of the
  node's bound, non-terminated pods; for MIG, free instances of the profile),
- every candidate GPU is at or above `scheduling.maxGpuUtilization` according to fresh samples. A node with stale or
  missing samples for any candidate GPU is never refused for utilization.

Prioritize scores every candidate 0..10 (kube-scheduler's MaxExtenderPriority), ranking fit first and letting
utilization order nodes within one fit class, so utilization refines the packing but can never undo it:

    fit key k(n)   binpack (default), per requested resource in name order, lexicographic, smaller is better:
                     whole GPUs, replicas: left = free - requested        (fewest devices of that kind left: best fit)
                     MIG profile P:       (left_P, slots_left, -block_left) for the free instance packing would take:
                                          slots_left = memory slots of its GPU no pod holds afterwards (fill used GPUs
                                          first), block_left = the largest catalog instance still placeable there
                   spread: the same terms with the sign flipped, `left` as a fraction of allocatable
    fit class r(n) = rank of k(n) among the distinct keys of this request's candidates (0 = best)
    util u(n)      = mean percent of the c idlest candidate GPUs with fresh samples (c = GPUs requested), rounded to
                     5 %; 50 (neutral) when there is no fresh sample
    band m         = 1 + round(2 * w_util / w_fit), at most 11 (w = scheduling.weights): 3 with the default 1:1;
                     1 when w_util = 0 (pure fit); 11 when w_fit = 0 (pure utilization, one class)
    sub-level s(n) = round((m - 1) * (u(n) - u_lo) / (u_hi - u_lo)), u_lo/u_hi the lowest/highest u in n's fit class
                     (0 when they are equal)
    score(n)       = max(0, 10 - m * r(n) - s(n))                  (0 for every node when both weights are 0)

So the best-fitting nodes score 10 (idlest) down to 8 (busiest) with the default weights, the next class 7..5, and so
on; a better fit class never scores below a worse one, two nodes in one class with different utilization score
differently, and two nodes with equal utilization but different free slots fall in different classes. Ranking is
relative to the request's candidates because kube-scheduler only compares nodes within one scheduling cycle, and it
spends the 11 available levels where the choice is made instead of on absolute values that would all round alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gpuguard.policy import mig
from gpuguard.policy.gpustate import (
    PERCENT_STEP,
    GpuRequest,
    GpuSample,
    NodeGpuState,
    NodeUtilization,
    product_refusal,
    sharing_refusal,
)
from gpuguard.policy.model import Scheduling, Weights

MAX_SCORE = 10
NEUTRAL_PERCENT = 50.0

RefusalCause = Literal["product", "sharing", "no-resource", "insufficient", "utilization"]
FitKey = tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why filter drops a node. `resolvable` False: preempting pods would not help (FailedAndUnresolvableNodes)."""

    node: str
    reason: str
    cause: RefusalCause
    resolvable: bool = True


@dataclass(frozen=True, slots=True)
class Reading:
    """Utilization of the GPUs a request could land on, from fresh samples only."""

    percent: float | None
    """Mean of the idlest candidates (as many as requested); None when no candidate has a fresh sample."""
    lowest: float | None
    complete: bool
    """Every candidate GPU has a fresh sample, so `lowest` speaks for all of them."""


UNKNOWN = Reading(None, None, False)

# ------------------------------------------------------------------------------------------------------------- filter


def fit_refusal(request: GpuRequest, state: NodeGpuState) -> Refusal | None:
    """The product and capacity checks; None when the node can hold the request."""
    mismatch = product_refusal(request, state.product)
    if mismatch is not None:
        return Refusal(state.name, mismatch, "product", resolvable=False)
    shared = sharing_refusal(request, state.sharing)
    if shared is not None:
        return Refusal(state.name, shared, "sharing", resolvable=False)
    for resource, count in request.resources:
        total = state.allocatable.get(resource, 0)
        if total == 0:
            return Refusal(state.name, _no_resource(state, resource), "no-resource", resolvable=False)
        free = state.free_of(resource)
        if free < count:
            return Refusal(state.name, f"needs {count} {resource}, {free} of {total} free", "insufficient")
    return None


def _no_resource(state: NodeGpuState, resource: str) -> str:
    profile = mig.profile_from_resource(resource)
    offered = sorted(p for r in state.allocatable if (p := mig.profile_from_resource(r)))
    if profile:
        return f"no {profile} MIG instances here ({'it offers ' + ', '.join(offered) if offered else 'no MIG at all'})"
    return f"node has no {resource}"


def utilization_refusal(request: GpuRequest, state: NodeGpuState, reading: Reading, *, limit: float) -> Refusal | None:
    if reading.complete and reading.lowest is not None and reading.lowest >= limit:
        reason = f"every candidate GPU is at or above {limit:g}% utilization (idlest {reading.lowest:g}%)"
        return Refusal(state.name, reason, "utilization")
    return None


def filter_nodes(
    request: GpuRequest,
    states: Sequence[NodeGpuState],
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
) -> tuple[list[NodeGpuState], list[Refusal]]:
    """Split the candidates into those that can take the pod and the refusals (input order kept).

    Built for thousands of candidates per call: cheap screens pick the few nodes that might fail (short of capacity,
    another product, samples near the limit) and only those get the full checks.
    """
    if not request.wants_gpu:
        return list(states), []
    refusals = [r for s in _fit_suspects(request, states) if (r := fit_refusal(request, s)) is not None]
    refused = {r.node for r in refusals}
    limit, max_age = scheduling.max_gpu_utilization, scheduling.metrics_max_age
    mig_kind = mig.profile_from_resource(_utilization_resource(request)[0]) is not None
    for state in _hot_suspects(states, utilization, limit, mig_kind=mig_kind):
        if state.name not in refused:
            reading = read_utilization(request, state, utilization.get(state.name), now=now, max_age=max_age)
            refusal = utilization_refusal(request, state, reading, limit=limit)
            if refusal is not None:
                refusals.append(refusal)
                refused.add(state.name)
    if not refused:
        return list(states), []
    order = {s.name: i for i, s in enumerate(states)}
    refusals.sort(key=lambda r: order[r.node])
    return [s for s in states if s.name not in refused], refusals


def _fit_suspects(request: GpuRequest, states: Sequence[NodeGpuState]) -> Sequence[NodeGpuState]:
    """The states that might fail `fit_refusal` (all of them unless the request has the one common shape)."""
    if len(request.resources) != 1 or request.product_terms:
        return states
    (resource, count), product, avoid = request.resources[0], request.product, request.avoid_sharing
    if product is None and not avoid:
        return [s for s in states if s.free.get(resource, 0) < count]
    return [s for s in states
            if s.free.get(resource, 0) < count or (product is not None and s.product != product) or s.sharing in avoid]


def _hot_suspects(
    states: Sequence[NodeGpuState], utilization: Mapping[str, NodeUtilization], limit: float, *, mig_kind: bool
) -> list[NodeGpuState]:
    """States whose samples (polled or reported) could put every candidate GPU at or above the limit."""
    get = utilization.get
    if mig_kind:
        return [
            s for s in states
            if ((u := get(s.name)) is not None and u.mig_ceiling >= limit)
            or (s.reported is not None and s.reported.mig_ceiling >= limit)
        ]
    return [
        s for s in states
        if s.mig_single
        or ((u := get(s.name)) is not None and u.whole_floor >= limit)
        or (s.reported is not None and s.reported.whole_floor >= limit)
    ]


# -------------------------------------------------------------------------------------------------------- utilization


def utilization_source(
    state: NodeGpuState, polled: NodeUtilization | None, *, now: float, max_age: float
) -> NodeUtilization | None:
    """Prometheus' samples when it has a fresh one for the node, else the node agent's annotation."""
    if polled is not None and now - polled.newest <= max_age:
        return polled
    reported = state.reported
    if reported is not None and now - reported.newest <= max_age:
        return reported
    return None


def read_utilization(
    request: GpuRequest, state: NodeGpuState, polled: NodeUtilization | None, *, now: float, max_age: float
) -> Reading:
    source = utilization_source(state, polled, now=now, max_age=max_age)
    if source is None or not request.resources:
        return UNKNOWN
    resource, count = _utilization_resource(request)
    profile = mig.profile_from_resource(resource)
    if profile is not None:
        return _mig_reading(state, source, profile, count, now=now, max_age=max_age)
    if not state.mig_single and now - source.oldest <= max_age:
        return _whole_reading_fast(state, source, count)
    fresh = [s for s in source.fresh(now=now, max_age=max_age) if s.mig == state.mig_single]
    expected = len(state.mig_gpus) if state.mig_single else _expected_whole(state)
    return _reading(fresh, count, complete=0 < expected <= len(fresh))


def _utilization_resource(request: GpuRequest) -> tuple[str, int]:
    """A MIG resource if the pod asks for one (its slice is where it runs), else its first GPU resource."""
    return next(((r, n) for r, n in request.resources if mig.profile_from_resource(r)), request.resources[0])


def _expected_whole(state: NodeGpuState) -> int:
    if state.whole_gpus:
        return len(state.whole_gpus)
    return max(state.physical_gpus - len(state.mig_gpus), 0)


def _whole_reading_fast(state: NodeGpuState, source: NodeUtilization, count: int) -> Reading:
    """Every sample is fresh: the sorted percentages and their running sums answer in O(1)."""
    n = len(source.whole)
    if n == 0:
        return UNKNOWN
    expected = _expected_whole(state)
    return Reading(source.whole_means[min(count, n) - 1], source.whole[0], 0 < expected <= n)


def _mig_reading(
    state: NodeGpuState, source: NodeUtilization, profile: str, count: int, *, now: float, max_age: float
) -> Reading:
    uuids = state.mig_uuids_with_free(profile)
    if uuids:
        found = [source.by_uuid.get(u) for u in uuids]
        fresh = [s for s in found if s is not None and now - s.at <= max_age]
        return _reading(fresh, count, complete=len(fresh) == len(uuids))
    fresh = [s for s in source.fresh(now=now, max_age=max_age) if s.mig]
    return _reading(fresh, count, complete=0 < len(state.mig_gpus) <= len(fresh))


def _reading(samples: Sequence[GpuSample], count: int, *, complete: bool) -> Reading:
    if not samples:
        return UNKNOWN
    ordered = sorted(s.percent for s in samples)
    k = min(count, len(ordered))
    return Reading(sum(ordered[:k]) / k, ordered[0], complete)


# ---------------------------------------------------------------------------------------------------------------- fit


def fit_key(request: GpuRequest, state: NodeGpuState, *, spread: bool = False) -> FitKey:
    """Smaller is a better fit (see the module docstring). Assumes `fit_refusal` passed."""
    key: list[float] = []
    for resource, count in request.resources:
        left = state.free_of(resource) - count
        profile = mig.profile_from_resource(resource)
        if spread:
            key.append(-left / max(state.allocatable.get(resource, 1), 1))
        else:
            key.append(left)
        if profile is not None:
            choice = (state.mig_spread if spread else state.mig_binpack).get(profile)
            slots, block = (choice.slots_left, choice.block_left) if choice else (0, 0)
            key += [-slots, -block] if spread else [slots, -block]
    return tuple(key)


def band_width(weights: Weights) -> int:
    """How many score levels utilization may spread over inside one fit class."""
    if weights.utilization <= 0:
        return 1
    if weights.mig_fit <= 0:
        return MAX_SCORE + 1
    return min(MAX_SCORE + 1, 1 + round(2 * weights.utilization / weights.mig_fit))


def quantize(percent: float | None) -> float:
    if percent is None:
        return NEUTRAL_PERCENT
    return PERCENT_STEP * round(percent / PERCENT_STEP)


@dataclass(frozen=True, slots=True)
class ScoreDetail:
    """How one node's score came about (for logs, the demo and tests)."""

    node: str
    fit_key: FitKey
    fit_class: int
    """Rank among the feasible candidates (0 = best fit); -1 when the node cannot take the pod (score 0)."""
    percent: float | None
    """Utilization of the candidate GPUs, None when unknown (scored as 50 %)."""
    sub_level: int
    score: int


def score_nodes(
    request: GpuRequest,
    states: Sequence[NodeGpuState],
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
) -> list[int]:
    """The 0..10 score of each state, in input order (0 for nodes that cannot take the pod)."""
    return _scores(request, states, utilization, scheduling, now, explain=False)[0]


def explain_scores(
    request: GpuRequest,
    states: Sequence[NodeGpuState],
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
) -> list[ScoreDetail]:
    """`score_nodes` with its working shown, for logs, the demo and tests."""
    return _scores(request, states, utilization, scheduling, now, explain=True)[1]


def _scores(
    request: GpuRequest,
    states: Sequence[NodeGpuState],
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
    *,
    explain: bool,
) -> tuple[list[int], list[ScoreDetail]]:
    weights = scheduling.weights
    if not request.wants_gpu or (weights.mig_fit <= 0 and weights.utilization <= 0):
        return [0] * len(states), [ScoreDetail(s.name, (), -1, None, 0, 0) for s in states]
    positions = _feasible(request, states)
    feasible = [states[i] for i in positions]
    spread = scheduling.fit == "spread"
    keys = _fit_keys(request, feasible, spread=spread) if weights.mig_fit > 0 else [()] * len(feasible)
    rank = {key: r for r, key in enumerate(sorted(set(keys)))}
    ranks = [rank[k] for k in keys]
    band = band_width(weights)
    reach = len(rank) if explain else MAX_SCORE // band  # classes beyond reach score 0 whatever their utilization
    percents = _percents(request, feasible, ranks, utilization, scheduling.metrics_max_age, now, reach=reach)
    subs = _sub_levels(ranks, percents, band, reach)
    scores = [0] * len(states)
    for i, r, sub in zip(positions, ranks, subs):
        scores[i] = max(0, MAX_SCORE - band * r - sub)
    if not explain:
        return scores, []
    details = [ScoreDetail(s.name, (), -1, None, 0, 0) for s in states]
    for i, key, r, percent, sub in zip(positions, keys, ranks, percents, subs):
        details[i] = ScoreDetail(states[i].name, key, r, percent, sub, scores[i])
    return scores, details


def _feasible(request: GpuRequest, states: Sequence[NodeGpuState]) -> list[int]:
    """Positions of the states that pass `fit_refusal` (screened cheaply for the common request shape)."""
    if len(request.resources) != 1 or request.product_terms:
        return [i for i, s in enumerate(states) if fit_refusal(request, s) is None]
    (resource, count), product, avoid = request.resources[0], request.product, request.avoid_sharing
    if product is None and not avoid:
        return [i for i, s in enumerate(states) if s.free.get(resource, 0) >= count]
    return [i for i, s in enumerate(states)
            if s.free.get(resource, 0) >= count and (product is None or s.product == product)
            and s.sharing not in avoid]


def _fit_keys(request: GpuRequest, states: Sequence[NodeGpuState], *, spread: bool) -> list[FitKey]:
    if len(request.resources) == 1 and not spread and mig.profile_from_resource(request.resources[0][0]) is None:
        resource, count = request.resources[0]
        return [(s.free.get(resource, 0) - count,) for s in states]  # the common case, without the general loop
    return [fit_key(request, s, spread=spread) for s in states]


def _percents(
    request: GpuRequest,
    states: Sequence[NodeGpuState],
    ranks: Sequence[int],
    utilization: Mapping[str, NodeUtilization],
    max_age: float,
    now: float,
    *,
    reach: int,
) -> list[float | None]:
    """Utilization of each state's candidate GPUs, for the classes within reach of a non-zero score.

    Inlines `read_utilization`'s common case (whole GPUs, every polled sample fresh) to keep thousands of candidates
    cheap; everything else takes the general path.
    """
    resource, count = _utilization_resource(request)
    whole = mig.profile_from_resource(resource) is None
    get = utilization.get
    percents: list[float | None] = []
    for state, r in zip(states, ranks):
        u = get(state.name)
        if r > reach:
            percents.append(None)
        elif whole and u is not None and u.whole and now - u.oldest <= max_age and not state.mig_single:
            percents.append(u.whole_means[min(count, len(u.whole)) - 1])
        else:
            percents.append(read_utilization(request, state, u, now=now, max_age=max_age).percent)
    return percents


def _sub_levels(ranks: Sequence[int], percents: Sequence[float | None], band: int, reach: int) -> list[int]:
    """Each node's utilization step inside its fit class: 0 for the idlest, band - 1 for the busiest."""
    if band == 1:
        return [0] * len(ranks)
    step, neutral = PERCENT_STEP, NEUTRAL_PERCENT
    levels = [neutral if p is None else step * round(p / step) for p in percents]  # `quantize`, inlined
    spans: dict[int, tuple[float, float]] = {}
    for r, level in zip(ranks, levels):
        if r <= reach:
            lo, hi = spans.get(r, (level, level))
            if level < lo or level > hi:
                spans[r] = (min(lo, level), max(hi, level))
            elif r not in spans:
                spans[r] = (lo, hi)
    subs = []
    for r, level in zip(ranks, levels):
        lo, hi = spans.get(r, (level, level))
        subs.append(round((band - 1) * (level - lo) / (hi - lo)) if hi > lo else 0)
    return subs

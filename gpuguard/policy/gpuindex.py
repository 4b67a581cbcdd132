"""The same filter and prioritize decisions as `gpuguard.policy.scoring`, answered from an index of node states.

kube-scheduler asks about thousands of nodes per pod, and touching each node's state object in Python costs about a
microsecond (mostly cache misses); at 5,000 nodes that alone eats the latency budget. `GpuIndex` keeps, beside the
states, the node names grouped the way the common questions cut them: by free devices per resource, by product, by
whether a node could be too busy. A request then becomes a handful of set operations in C over the candidate names,
and only the few nodes that might be refused, or that can still score above 0, are looked at one by one.

The index is updated one node at a time (`put`, `remove`) whenever a state changes, so keeping it costs per change,
not per request. `filter_names` and `score_names` must agree exactly with `filter_nodes` and `score_nodes` on the same
states (tests check this on random clusters); request shapes outside the fast path (several resources, MIG profiles,
node affinity on the product, spread) take the general functions. Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence

from gpuguard.policy import mig
from gpuguard.policy.gpustate import PERCENT_STEP, GpuRequest, NodeGpuState, NodeUtilization
from gpuguard.policy.model import Scheduling
from gpuguard.policy.scoring import (
    MAX_SCORE,
    NEUTRAL_PERCENT,
    Refusal,
    band_width,
    filter_nodes,
    fit_refusal,
    read_utilization,
    score_nodes,
    utilization_refusal,
)


class GpuIndex:
    """Node states by name, plus the groupings filter and prioritize need. Mutable, single-threaded."""

    def __init__(self, states: Iterable[NodeGpuState] = ()) -> None:
        self.states: dict[str, NodeGpuState] = {}
        self._free: dict[str, dict[int, set[str]]] = {}
        """resource -> free devices -> names."""
        self._has: dict[str, set[str]] = {}
        """resource -> names with some allocatable."""
        self._product: dict[str, set[str]] = {}
        self._sharing: dict[str, set[str]] = {}
        """sharing-strategy label value -> names (nodes without the label are not listed)."""
        self._single: set[str] = set()
        self._floors: list[tuple[float, str]] = []
        """(reported whole-GPU floor, name), sorted: nodes whose agent annotation shows busy whole GPUs."""
        self._ceilings: list[tuple[float, str]] = []
        """(reported MIG ceiling, name), sorted."""
        self._polled: tuple[int, float, frozenset[str], frozenset[str]] | None = None
        self._levels: _LevelCache | None = None
        self._dirty: set[str] = set()
        """Nodes changed since the level cache last looked."""
        for state in states:
            self.put(state)

    def __len__(self) -> int:
        return len(self.states)

    @property
    def single(self) -> set[str]:
        """Nodes on the MIG `single` strategy (their `nvidia.com/gpu` are MIG devices)."""
        return self._single

    def get(self, name: str) -> NodeGpuState | None:
        return self.states.get(name)

    def put(self, state: NodeGpuState) -> None:
        """Add or replace a node's state."""
        self.remove(state.name)
        name = state.name
        self.states[name] = state
        self._dirty.add(name)
        for resource in state.allocatable:
            self._has.setdefault(resource, set()).add(name)
            self._free.setdefault(resource, {}).setdefault(state.free_of(resource), set()).add(name)
        self._product.setdefault(state.product, set()).add(name)
        if state.sharing:
            self._sharing.setdefault(state.sharing, set()).add(name)
        if state.mig_single:
            self._single.add(name)
        if state.reported is not None:
            bisect.insort(self._floors, (state.reported.whole_floor, name))
            bisect.insort(self._ceilings, (state.reported.mig_ceiling, name))

    def remove(self, name: str) -> None:
        state = self.states.pop(name, None)
        if state is None:
            return
        self._dirty.add(name)
        for resource in state.allocatable:
            self._has[resource].discard(name)
            self._free[resource][state.free_of(resource)].discard(name)
        self._product[state.product].discard(name)
        if state.sharing:
            self._sharing[state.sharing].discard(name)
        self._single.discard(name)
        if state.reported is not None:
            _discard_sorted(self._floors, (state.reported.whole_floor, name))
            _discard_sorted(self._ceilings, (state.reported.mig_ceiling, name))

    # ------------------------------------------------------------------------------------------------ groupings

    def short_of(self, resource: str, count: int, among: set[str]) -> set[str]:
        """Of `among`, the names with fewer than `count` free devices of the resource (none counts as 0)."""
        short = among - self._has.get(resource, set())
        for free, names in self._free.get(resource, {}).items():
            if free < count and names:
                short |= among & names
        return short

    def not_product(self, product: str, among: set[str]) -> set[str]:
        return among - self._product.get(product, set())

    def with_product(self, product: str, among: set[str]) -> set[str]:
        return among & self._product.get(product, set())

    def sharing_in(self, strategies: frozenset[str], among: set[str]) -> set[str]:
        """Of `among`, the names whose sharing-strategy label is one of `strategies`."""
        found: set[str] = set()
        for strategy in strategies:
            found |= among & self._sharing.get(strategy, set())
        return found

    def free_groups(self, resource: str, count: int, among: set[str]) -> list[tuple[int, set[str]]]:
        """(free devices, names) for the names of `among` with at least `count` free, fewest free first."""
        groups = []
        for free in sorted(f for f in self._free.get(resource, {}) if f >= count):
            names = among & self._free[resource][free]
            if names:
                groups.append((free, names))
        return groups

    def hot(self, polled: Mapping[str, NodeUtilization], limit: float, *, mig_kind: bool) -> set[str]:
        """Names whose samples could put every candidate GPU at or above `limit` (over-approximates)."""
        whole, mig_hot = self._polled_hot(polled, limit)
        if mig_kind:
            return set(mig_hot) | {n for _, n in self._ceilings[bisect.bisect_left(self._ceilings, (limit, "")):]}
        found = set(whole) | self._single
        return found | {n for _, n in self._floors[bisect.bisect_left(self._floors, (limit, "")):]}

    def _polled_hot(self, polled: Mapping[str, NodeUtilization], limit: float) -> tuple[frozenset[str], frozenset[str]]:
        """Cached per Prometheus refresh (the poller replaces the whole mapping) and limit."""
        cached = self._polled
        if cached is None or cached[0] != id(polled) or cached[1] != limit:
            whole = frozenset(n for n, u in polled.items() if u.whole_floor >= limit)
            mig_hot = frozenset(n for n, u in polled.items() if u.mig_ceiling >= limit)
            cached = self._polled = (id(polled), limit, whole, mig_hot)
        return cached[2], cached[3]


    def utilization_levels(self, polled: Mapping[str, NodeUtilization], max_age: float, now: float) -> _LevelCache:
        """Each node's utilization level for whole-GPU (1..LEVEL_COUNTS) and MIG requests, kept across requests.

        Rebuilt when Prometheus' samples are replaced (every refresh) or `max_age` changes; nodes changed since, or
        whose cached level went stale, are recomputed one by one.
        """
        cache = self._levels
        replaced = cache is not None and cache.polled is not polled and bool(cache.polled or polled)
        if cache is None or replaced or cache.max_age != max_age:
            cache = self._levels = _LevelCache(self, polled, max_age, now)
            self._dirty.clear()
        elif self._dirty:
            for name in self._dirty:
                cache.refresh(self, name, now)
            self._dirty.clear()
        cache.expire(self, now)
        return cache


LEVEL_COUNTS = 8
"""Requests for up to this many GPUs read cached utilization levels; larger ones compute them per node."""


class _LevelCache:
    """name -> utilization level (5 % steps, 50 when unknown) of the k idlest whole GPUs, k = 1..LEVEL_COUNTS.

    Only nodes `read_utilization` would answer by its fast path are cached; the rest (MIG `single`, partly stale
    samples) are left out and computed per request. Each entry expires when a sample it rests on gets older than
    `max_age` (a heap orders the expiries), and is then recomputed.
    """

    def __init__(self, index: GpuIndex, polled: Mapping[str, NodeUtilization], max_age: float, now: float) -> None:
        self.polled, self.max_age = polled, max_age
        self.levels: dict[str, tuple[float, ...]] = {}
        self.mig: dict[str, dict[tuple[str, int], float]] = {}
        """name -> (profile, count) -> level, filled on first use (MIG requests name few nodes and profiles)."""
        self._expires: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        for name in index.states:
            self.refresh(index, name, now)

    def refresh(self, index: GpuIndex, name: str, now: float) -> None:
        self.levels.pop(name, None)
        self.mig.pop(name, None)
        self._expires.pop(name, None)
        state = index.states.get(name)
        if state is None or state.mig_single:
            return
        max_age, polled = self.max_age, self.polled.get(name)
        source = polled if polled is not None and now - polled.newest <= max_age else state.reported
        if source is not None and now - source.newest > max_age:
            source = None
        expires = _next_change(polled, state.reported, max_age, now)
        if source is None:
            self._keep(name, (NEUTRAL_PERCENT,) * LEVEL_COUNTS, expires)
        elif source.whole and now - source.oldest <= max_age:
            n = len(source.whole)
            levels = tuple(source.whole_levels[min(k, n) - 1] for k in range(1, LEVEL_COUNTS + 1))
            self._keep(name, levels, min(expires, source.oldest + max_age))

    def _keep(self, name: str, levels: tuple[float, ...], expires: float) -> None:
        self.levels[name] = levels
        self._expire_at(name, expires)

    def _expire_at(self, name: str, expires: float) -> None:
        if expires < self._expires.get(name, float("inf")):
            self._expires[name] = expires
            heapq.heappush(self._heap, (expires, name))

    def mig_level(self, index: GpuIndex, request: GpuRequest, name: str, profile: str, count: int, now: float) -> float:
        """The level `read_utilization` gives a MIG request on this node, computed once until the node or a sample
        it could rest on changes."""
        cached = self.mig.get(name)
        level = cached.get((profile, count)) if cached is not None else None
        if level is None:
            level = _level(request, index, self.polled, name, self.max_age, now)
            self.mig.setdefault(name, {})[(profile, count)] = level
            state, polled = index.states[name], self.polled.get(name)
            expires = _next_change(polled, state.reported, self.max_age, now)
            for source in (polled, state.reported):
                if source is not None and now - source.oldest <= self.max_age:
                    expires = min(expires, source.oldest + self.max_age)
            self._expire_at(name, expires)
        return level

    def expire(self, index: GpuIndex, now: float) -> None:
        """Recompute the entries whose samples have gone stale by `now`."""
        heap = self._heap
        while heap and heap[0][0] < now:
            expires, name = heapq.heappop(heap)
            if self._expires.get(name) == expires:
                self.refresh(index, name, now)


def _next_change(polled: NodeUtilization | None, reported: NodeUtilization | None, max_age: float, now: float) -> float:
    """When the choice between polled and reported samples next flips (one of them turning stale)."""
    times = [u.newest + max_age for u in (polled, reported) if u is not None and u.newest + max_age >= now]
    return min(times, default=float("inf"))


def _discard_sorted(items: list[tuple[float, str]], item: tuple[float, str]) -> None:
    at = bisect.bisect_left(items, item)
    if at < len(items) and items[at] == item:
        del items[at]


# ----------------------------------------------------------------------------------------------------- filter


def filter_names(
    request: GpuRequest,
    names: Sequence[str],
    index: GpuIndex,
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
) -> tuple[list[str], list[Refusal], list[str]]:
    """(kept names in input order, refusals, names the index does not know) — as `filter_nodes` decides."""
    among = set(names)
    unknown = among.difference(index.states)
    if unknown:
        among -= unknown
    if not request.wants_gpu:
        return _kept(names, unknown), [], sorted(unknown)
    if len(request.resources) != 1 or request.product_terms:
        states = [index.states[n] for n in names if n in among]
        passed, refusals = filter_nodes(request, states, utilization=utilization, scheduling=scheduling, now=now)
        return _kept(names, unknown | {r.node for r in refusals}), refusals, sorted(unknown)
    resource, count = request.resources[0]
    suspects = index.short_of(resource, count, among)
    if request.product is not None:
        suspects |= index.not_product(request.product, among)
    if request.avoid_sharing:
        suspects |= index.sharing_in(request.avoid_sharing, among)
    refusals = [r for n in suspects if (r := fit_refusal(request, index.states[n])) is not None]
    refused = {r.node for r in refusals}
    limit, max_age = scheduling.max_gpu_utilization, scheduling.metrics_max_age
    hot = among & index.hot(utilization, limit, mig_kind=mig.profile_from_resource(resource) is not None)
    for name in hot - refused:
        state = index.states[name]
        reading = read_utilization(request, state, utilization.get(name), now=now, max_age=max_age)
        refusal = utilization_refusal(request, state, reading, limit=limit)
        if refusal is not None:
            refusals.append(refusal)
            refused.add(name)
    refusals.sort(key=lambda r: r.node)
    return _kept(names, unknown | refused), refusals, sorted(unknown)


def _kept(names: Sequence[str], dropped: set[str]) -> list[str]:
    return [n for n in names if n not in dropped] if dropped else list(names)


# --------------------------------------------------------------------------------------------------- prioritize


def score_names(
    request: GpuRequest,
    names: Sequence[str],
    index: GpuIndex,
    *,
    utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling,
    now: float,
) -> list[int]:
    """The score of each name, in input order (0 for unknown nodes) — as `score_nodes` decides."""
    weights = scheduling.weights
    fast = (len(request.resources) == 1 and not request.product_terms and scheduling.fit == "binpack"
            and weights.mig_fit > 0)
    if not request.wants_gpu or not fast:
        return _scored_generally(request, names, index, utilization=utilization, scheduling=scheduling, now=now)
    resource, count = request.resources[0]
    among = set(names).intersection(index.states)
    if request.product is not None:
        among = index.with_product(request.product, among)
    if request.avoid_sharing:
        among -= index.sharing_in(request.avoid_sharing, among)
    band = band_width(weights)
    reach = MAX_SCORE // band
    scores: dict[str, int] = {}
    for rank, members in enumerate(_classes(index, resource, count, among, reach)):
        levels = _levels(request, members, index, utilization, scheduling.metrics_max_age, now, count=count)
        base, lo, hi = MAX_SCORE - band * rank, min(levels), max(levels)
        if hi > lo and band > 1:
            span, steps = hi - lo, band - 1  # the same arithmetic, in the same order, as scoring._sub_levels
            scores.update(zip(members, [max(0, base - round(steps * (level - lo) / span)) for level in levels]))
        else:
            scores.update(dict.fromkeys(members, max(0, base)))
    get = scores.get
    return [get(n, 0) for n in names]


def _classes(index: GpuIndex, resource: str, count: int, among: set[str], reach: int) -> Iterator[list[str]]:
    """The fit classes within reach, best first: by free devices left, then (MIG) by the slice's slots and block."""
    profile = mig.profile_from_resource(resource)
    found = 0
    for _, group in index.free_groups(resource, count, among):
        if profile is None:
            yield list(group)
            found += 1
        else:
            for members in _by_slice(index, group, profile):
                if found > reach:
                    return
                yield members
                found += 1
        if found > reach:
            return


def _by_slice(index: GpuIndex, group: set[str], profile: str) -> list[list[str]]:
    """Nodes with as many free instances of the profile, split by `fit_key`'s tie-breakers (slots, then block)."""
    keyed: dict[tuple[int, int], list[str]] = {}
    states = index.states
    for name in group:
        choice = states[name].mig_binpack.get(profile)
        key = (choice.slots_left, -choice.block_left) if choice else (0, 0)
        keyed.setdefault(key, []).append(name)
    return [keyed[key] for key in sorted(keyed)]


def _levels(
    request: GpuRequest, members: list[str], index: GpuIndex, utilization: Mapping[str, NodeUtilization],
    max_age: float, now: float, *, count: int,
) -> list[float]:
    """Each member's utilization in 5 % steps (50 when unknown), from the level cache where it can answer."""
    profile = mig.profile_from_resource(request.resources[0][0])
    if profile is not None:
        cache = index.utilization_levels(utilization, max_age, now)
        return [cache.mig_level(index, request, name, profile, count, now) for name in members]
    if count <= LEVEL_COUNTS:
        cached = index.utilization_levels(utilization, max_age, now).levels.get
        k = count - 1
        rows = [cached(name) for name in members]
        if all(row is not None for row in rows):
            return [row[k] for row in rows if row is not None]
        return [row[k] if row is not None else _level(request, index, utilization, name, max_age, now)
                for name, row in zip(members, rows)]
    return [_level(request, index, utilization, name, max_age, now) for name in members]


def _level(
    request: GpuRequest, index: GpuIndex, utilization: Mapping[str, NodeUtilization], name: str, max_age: float,
    now: float,
) -> float:
    percent = read_utilization(request, index.states[name], utilization.get(name), now=now, max_age=max_age).percent
    return NEUTRAL_PERCENT if percent is None else PERCENT_STEP * round(percent / PERCENT_STEP)


def _scored_generally(
    request: GpuRequest, names: Sequence[str], index: GpuIndex, *, utilization: Mapping[str, NodeUtilization],
    scheduling: Scheduling, now: float,
) -> list[int]:
    known = [s for n in names if (s := index.states.get(n)) is not None]
    found = dict(zip((s.name for s in known),
                     score_nodes(request, known, utilization=utilization, scheduling=scheduling, now=now)))
    return [found.get(n, 0) for n in names]

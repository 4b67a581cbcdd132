"""The indexed filter/prioritize agree exactly with the plain functions, on random clusters and after random binds."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguard.policy.gpuindex import GpuIndex, filter_names, score_names
from gpuguard.policy import mig
from gpuguard.policy.gpustate import (
    GpuRequest,
    GpuSample,
    MigSlice,
    NodeGpuState,
    NodeUtilization,
    ProductTerm,
    bind,
    catalog_gpu,
    release,
)
from gpuguard.policy.scoring import filter_nodes, score_nodes
from tests.extender.conftest import policy_with

NOW = 50_000.0
PRODUCTS = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "Tesla-T4", ""]
RESOURCES = ["nvidia.com/gpu", "nvidia.com/gpu.shared", "nvidia.com/mig-1g.10gb"]
PERCENTS = st.sampled_from([0.0, 20.0, 50.0, 90.0, 95.0, 100.0])
AGES = st.sampled_from([5.0, 119.0, 121.0, 3600.0])
SHARINGS = st.sampled_from(["", "none", "time-slicing", "mps"])
NOT_SHARED = frozenset({"time-slicing", "mps"})
H100_80GB = mig.BUILTIN.products["NVIDIA-H100-80GB-HBM3"]


@st.composite
def utilizations(draw: Any, gpus: int, mig: bool = False) -> NodeUtilization | None:
    if draw(st.booleans()):
        return None
    count = draw(st.integers(1, max(gpus, 1)))
    return NodeUtilization(tuple(
        GpuSample(f"GPU-{i}", draw(PERCENTS), NOW - draw(AGES), mig and i == 0) for i in range(count)))


@st.composite
def nodes(draw: Any, index: int) -> NodeGpuState:
    name = f"node-{index:03d}"
    kind = draw(st.sampled_from(["whole", "whole", "shared", "single", "mig", "none"]))
    gpus = draw(st.sampled_from([1, 2, 4, 8]))
    product = draw(st.sampled_from(PRODUCTS))
    if kind == "none":
        return NodeGpuState(name, "", {}, {})
    if kind == "mig":
        slices = tuple(MigSlice("1g.10gb", s, 1, draw(st.booleans())) for s in range(7))
        used = draw(st.none() | st.integers(0, 7))
        return NodeGpuState(name, "NVIDIA-H100-80GB-HBM3", {"nvidia.com/mig-1g.10gb": 7},
                            None if used is None else {"nvidia.com/mig-1g.10gb": used},
                            (catalog_gpu(H100_80GB, 0, "GPU-0", slices),), reported=draw(utilizations(1, mig=True)))
    resource = "nvidia.com/gpu.shared" if kind == "shared" else "nvidia.com/gpu"
    total = gpus * (4 if kind == "shared" else 1)
    return NodeGpuState(
        name, product, {resource: total}, {resource: draw(st.integers(0, total))}, physical_gpus=gpus,
        sharing=draw(SHARINGS),
        mig_single=kind == "single", whole_gpus=tuple(f"GPU-{i}" for i in range(gpus)) if draw(st.booleans()) else (),
        reported=draw(utilizations(gpus)),
    )


@st.composite
def clusters(draw: Any) -> tuple[list[NodeGpuState], dict[str, NodeUtilization]]:
    states = [draw(nodes(i)) for i in range(draw(st.integers(1, 30)))]
    polled = {}
    for state in states:
        sample = draw(utilizations(max(state.physical_gpus, 1), mig=bool(state.mig_gpus)))
        if sample is not None:
            polled[state.name] = sample
    return states, polled


@st.composite
def requests(draw: Any) -> GpuRequest:
    resources = draw(st.lists(st.tuples(st.sampled_from(RESOURCES), st.integers(1, 8)), max_size=2,
                              unique_by=lambda r: r[0]))
    product = draw(st.none() | st.sampled_from(PRODUCTS[:3]))
    terms = draw(st.sampled_from([(), (ProductTerm(allowed=frozenset(PRODUCTS[:2])),)]))
    avoid = draw(st.sampled_from([frozenset(), NOT_SHARED, frozenset({"mps"})]))
    return GpuRequest(tuple(sorted(resources)), product, terms, avoid_sharing=avoid)


SCHEDULINGS = st.sampled_from([
    policy_with().scheduling,
    policy_with(fit="spread").scheduling,
    policy_with(weights={"migFit": 1.0, "utilization": 0.0}).scheduling,
    policy_with(weights={"migFit": 0.0, "utilization": 1.0}).scheduling,
    policy_with(weights={"migFit": 1.0, "utilization": 3.0}, maxGpuUtilization=90).scheduling,
])


def agree(request: GpuRequest, states: list[NodeGpuState], polled: dict[str, NodeUtilization],
          scheduling: Any, names: list[str]) -> None:
    index = GpuIndex(states)
    known = [s for s in (index.get(n) for n in names) if s is not None]
    kwargs: dict[str, Any] = {"utilization": polled, "scheduling": scheduling, "now": NOW}
    passed, refusals = filter_nodes(request, known, **kwargs)
    kept, indexed_refusals, unknown = filter_names(request, names, index, **kwargs)
    assert kept == [s.name for s in passed]
    assert {r.node: r for r in indexed_refusals} == {r.node: r for r in refusals}
    assert unknown == sorted({n for n in names if index.get(n) is None})
    plain = dict(zip((s.name for s in known), score_nodes(request, known, **kwargs)))
    assert score_names(request, names, index, **kwargs) == [plain.get(n, 0) for n in names]


@settings(max_examples=300, deadline=None)
@given(clusters(), requests(), SCHEDULINGS, st.data())
def test_indexed_answers_equal_the_plain_ones(cluster: Any, request: GpuRequest, scheduling: Any, data: Any) -> None:
    states, polled = cluster
    names = [s.name for s in states]
    chosen = data.draw(st.lists(st.sampled_from(names + ["unknown-node"]), unique=True, min_size=1))
    agree(request, states, polled, scheduling, chosen)


@settings(max_examples=60, deadline=None)
@given(clusters(), st.lists(st.tuples(st.integers(0, 29), st.integers(1, 4), st.booleans()), max_size=25))
def test_the_index_stays_consistent_through_binds_and_releases(cluster: Any, moves: list[Any]) -> None:
    states, polled = cluster
    index = GpuIndex(states)
    for position, count, placing in moves:
        state = states[position % len(states)]
        current = index.get(state.name)
        assert current is not None
        resource = next(iter(current.allocatable), "nvidia.com/gpu")
        request = GpuRequest(((resource, count),))
        if placing and current.free_of(resource) >= count:
            index.put(bind(current, request).state)
        elif not placing:
            index.put(release(current, request))
    fresh = list(index.states.values())
    for request in (GpuRequest((("nvidia.com/gpu", 1),)), GpuRequest((("nvidia.com/gpu", 2),), PRODUCTS[0]),
                    GpuRequest((("nvidia.com/gpu", 1),), avoid_sharing=NOT_SHARED)):
        agree(request, fresh, polled, policy_with().scheduling, [s.name for s in fresh])
    index.remove(fresh[0].name)
    assert index.get(fresh[0].name) is None and len(index) == len(fresh) - 1


@settings(max_examples=80, deadline=None)
@given(clusters(), clusters(), st.lists(st.sampled_from([0.0, 1.0, 30.0, 90.0, 116.0, 200.0, 4000.0]), min_size=2,
                                        max_size=8), st.integers(0, 8))
def test_cached_utilization_levels_follow_time_and_new_samples(
    first: Any, second: Any, steps: list[float], switch: int
) -> None:
    states, polled = first
    _, replacement = second
    index = GpuIndex(states)
    names = [s.name for s in states]
    scheduling = policy_with().scheduling
    for i, step in enumerate(sorted(steps)):
        now = NOW + step  # samples age between requests while the same board stays in place
        board = replacement if i >= switch else polled  # until Prometheus replaces its samples
        requests = [GpuRequest((("nvidia.com/gpu", count),)) for count in (1, 3, 8, 12)]
        for request in [*requests, GpuRequest((("nvidia.com/mig-1g.10gb", 1),))]:
            plain = score_nodes(request, states, utilization=board, scheduling=scheduling, now=now)
            assert score_names(request, names, index, utilization=board, scheduling=scheduling, now=now) == plain


def test_a_whole_gpu_pod_is_refused_on_shared_nodes_as_unresolvable_by_both_paths() -> None:
    states = [
        NodeGpuState("exclusive", "Tesla-T4", {"nvidia.com/gpu": 4}, {}, physical_gpus=4, sharing="none"),
        NodeGpuState("sliced", "Tesla-T4-SHARED", {"nvidia.com/gpu": 16}, {}, physical_gpus=4, sharing="time-slicing"),
        NodeGpuState("mps", "Tesla-T4-SHARED", {"nvidia.com/gpu": 16}, {}, physical_gpus=4, sharing="mps"),
        NodeGpuState("unlabelled", "Tesla-T4", {"nvidia.com/gpu": 4}, {}, physical_gpus=4),
    ]
    request = GpuRequest((("nvidia.com/gpu", 1),), avoid_sharing=NOT_SHARED)
    kwargs: dict[str, Any] = {"utilization": {}, "scheduling": policy_with().scheduling, "now": NOW}
    kept, refusals, _ = filter_names(request, [s.name for s in states], GpuIndex(states), **kwargs)
    assert kept == ["exclusive", "unlabelled"]
    assert {r.node: (r.cause, r.resolvable) for r in refusals} == {"sliced": ("sharing", False),
                                                                  "mps": ("sharing", False)}
    assert "shared (nvidia.com/gpu.sharing-strategy=time-slicing)" in next(r.reason for r in refusals
                                                                          if r.node == "sliced")
    agree(request, states, {}, policy_with().scheduling, [s.name for s in states])

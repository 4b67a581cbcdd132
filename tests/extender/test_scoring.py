"""Filter and prioritize math: refusals and their reasons, the score formula, and packing that protects capacity."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuguard.policy import mig
from gpuguard.policy.gpustate import (
    GpuRequest,
    GpuSample,
    MigSlice,
    NodeGpuState,
    NodeUtilization,
    bind,
    catalog_gpu,
)
from gpuguard.policy.model import Scheduling
from gpuguard.policy.scoring import (
    band_width,
    explain_scores,
    filter_nodes,
    fit_refusal,
    score_nodes,
)
from tests.extender.conftest import policy_with

NOW = 1_000_000.0
A100, H100 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"
GPU = "nvidia.com/gpu"
MIG_1G = "nvidia.com/mig-1g.10gb"
DEFAULT = policy_with().scheduling
H100_80GB = mig.BUILTIN.products["NVIDIA-H100-80GB-HBM3"]


def whole(name: str, *, free: int, total: int = 8, product: str = A100) -> NodeGpuState:
    return NodeGpuState(name, product, {GPU: total}, {GPU: total - free}, physical_gpus=total)


def util(*percents: float, at: float = NOW - 10, mig: bool = False) -> NodeUtilization:
    return NodeUtilization(tuple(GpuSample(f"GPU-{i}", p, at, mig) for i, p in enumerate(percents)))


def wants(resource: str = GPU, count: int = 1, product: str | None = None) -> GpuRequest:
    return GpuRequest(((resource, count),), product)


def scores(request: GpuRequest, states: Sequence[NodeGpuState], utilization: dict[str, NodeUtilization] | None = None,
           scheduling: Scheduling = DEFAULT) -> dict[str, int]:
    found = score_nodes(request, states, utilization=utilization or {}, scheduling=scheduling, now=NOW)
    return {s.name: score for s, score in zip(states, found)}


def refusals(request: GpuRequest, states: Sequence[NodeGpuState],
             utilization: dict[str, NodeUtilization] | None = None) -> dict[str, tuple[str, bool]]:
    passed, refused = filter_nodes(request, states, utilization=utilization or {}, scheduling=DEFAULT, now=NOW)
    assert [s.name for s in passed] == [s.name for s in states if s.name not in {r.node for r in refused}]
    return {r.node: (r.reason, r.resolvable) for r in refused}


# -------------------------------------------------------------------------------------------------------- filter


def test_nodes_that_can_hold_the_request_pass_in_input_order() -> None:
    nodes = [whole("b", free=2), whole("a", free=8), whole("c", free=1)]
    passed, refused = filter_nodes(wants(count=2), nodes, utilization={}, scheduling=DEFAULT, now=NOW)
    assert [s.name for s in passed] == ["b", "a"]
    assert [(r.node, r.reason, r.cause, r.resolvable) for r in refused] == [
        ("c", "needs 2 nvidia.com/gpu, 1 of 8 free", "insufficient", True)]


@pytest.mark.parametrize(
    ("request_", "node", "reason", "resolvable"),
    [
        (wants(product=H100), whole("n", free=8), f"pod selects nvidia.com/gpu.product={H100}, node has {A100}", False),
        (wants(MIG_1G), whole("n", free=8), "no 1g.10gb MIG instances here" , False),
        (wants(MIG_1G), NodeGpuState("n", H100, {"nvidia.com/mig-3g.40gb": 2}, {}),
         "no 1g.10gb MIG instances here (it offers 3g.40gb)", False),
        (wants(GPU, 1), NodeGpuState("cpu", "", {}, {}), "node has no nvidia.com/gpu", False),
        (wants(MIG_1G, 1), NodeGpuState("n", H100, {MIG_1G: 7}, {MIG_1G: 7}),
         "needs 1 nvidia.com/mig-1g.10gb, 0 of 7 free", True),
    ],
)
def test_refusals_say_why_in_one_line(request_: GpuRequest, node: NodeGpuState, reason: str, resolvable: bool) -> None:
    refusal = fit_refusal(request_, node)
    assert refusal is not None
    assert refusal.reason.startswith(reason) and "\n" not in refusal.reason
    assert refusal.resolvable is resolvable


def test_a_node_whose_every_candidate_gpu_is_too_busy_fails_the_filter() -> None:
    nodes = [whole("hot", free=2), whole("warm", free=2), whole("cool", free=2)]
    found = refusals(wants(), nodes, {"hot": util(*[96] * 8), "warm": util(*[96] * 7, 94), "cool": util(*[0] * 8)})
    assert found == {"hot": ("every candidate GPU is at or above 95% utilization (idlest 96%)", True)}


@pytest.mark.parametrize(
    "samples",
    [
        util(*[99] * 8, at=NOW - 121),  # stale: older than metricsMaxAge (120 s)
        util(*[99] * 7),  # one GPU has no sample: it may be idle
        None,  # no metrics at all
    ],
    ids=["stale", "incomplete", "missing"],
)
def test_stale_or_missing_metrics_never_fail_a_node(samples: NodeUtilization | None) -> None:
    utilization = {"n": samples} if samples is not None else {}
    assert refusals(wants(), [whole("n", free=8)], utilization) == {}


def test_the_agent_annotation_stands_in_when_prometheus_has_nothing_fresh() -> None:
    node = NodeGpuState("n", A100, {GPU: 2}, {}, physical_gpus=2, reported=util(97, 98))
    assert "idlest 97%" in refusals(wants(), [node])["n"][0]
    assert refusals(wants(), [node], {"n": util(10, 20)}) == {}  # fresh Prometheus samples win


def test_mig_nodes_are_judged_by_the_gpus_holding_a_free_instance() -> None:
    gpus = (catalog_gpu(H100_80GB, 0, "GPU-0", (MigSlice("1g.10gb", 0, 1),)),
            catalog_gpu(H100_80GB, 1, "GPU-1", (MigSlice("3g.40gb", 0, 4),)))
    node = NodeGpuState("n", H100, {MIG_1G: 1, "nvidia.com/mig-3g.40gb": 1}, {}, gpus)
    busy_where_1g_is = util(99, 0, mig=True)
    assert "idlest 99%" in refusals(wants(MIG_1G), [node], {"n": busy_where_1g_is})["n"][0]
    assert refusals(wants("nvidia.com/mig-3g.40gb"), [node], {"n": busy_where_1g_is}) == {}


def test_pods_without_gpu_requests_pass_everywhere_and_score_zero() -> None:
    nodes = [whole("a", free=0), NodeGpuState("cpu", "", {}, {})]
    assert refusals(GpuRequest(), nodes) == {}
    assert scores(GpuRequest(), nodes) == {"a": 0, "cpu": 0}


# ---------------------------------------------------------------------------------------------------- prioritize


def test_best_fit_scores_highest() -> None:
    nodes = [whole("empty", free=8), whole("tight", free=2), whole("half", free=4)]
    assert scores(wants(count=2), nodes) == {"tight": 10, "half": 7, "empty": 4}


def test_nodes_equal_but_for_utilization_score_differently() -> None:
    nodes = [whole("idle", free=4), whole("busy", free=4)]
    found = scores(wants(), nodes, {"idle": util(*[10] * 8), "busy": util(*[60] * 8)})
    assert found["idle"] > found["busy"]


def test_nodes_equal_but_for_free_slots_score_differently() -> None:
    nodes = [whole("roomy", free=6), whole("snug", free=3)]
    same = {"roomy": util(*[30] * 8), "snug": util(*[30] * 8)}
    found = scores(wants(), nodes, same)
    assert found["snug"] > found["roomy"]


def test_mig_nodes_equal_but_for_free_slots_score_differently() -> None:
    partly_used = catalog_gpu(H100_80GB, 0, "GPU-0", tuple(MigSlice("1g.10gb", s, 1, s < 3) for s in range(7)))
    untouched = catalog_gpu(H100_80GB, 0, "GPU-1", tuple(MigSlice("1g.10gb", s, 1) for s in range(7)))
    a = NodeGpuState("a", H100, {MIG_1G: 7}, None, (partly_used,))
    b = NodeGpuState("b", H100, {MIG_1G: 7}, None, (untouched,))
    found = scores(wants(MIG_1G), [a, b])
    assert found["a"] > found["b"]


def test_utilization_never_undoes_the_packing() -> None:
    nodes = [whole("tight-but-busy", free=1), whole("loose-and-idle", free=8)]
    found = scores(wants(), nodes, {"tight-but-busy": util(*[90] * 8), "loose-and-idle": util(*[0] * 8)})
    assert found["tight-but-busy"] > found["loose-and-idle"]


def test_unknown_utilization_scores_neutral() -> None:
    nodes = [whole("idle", free=4), whole("unknown", free=4), whole("busy", free=4)]
    found = scores(wants(), nodes, {"idle": util(*[0] * 8), "busy": util(*[100] * 8)})
    assert found["idle"] > found["unknown"] > found["busy"]


def test_candidate_utilization_is_the_idlest_gpus_the_pod_would_get() -> None:
    # a node whose 2 free GPUs are idle is as good as a fully idle one for a 2-GPU pod
    nodes = [whole("a", free=4), whole("b", free=4)]
    found = explain_scores(wants(count=2), nodes, utilization={"a": util(0, 0, 90, 90, 90, 90, 90, 90),
                                                                  "b": util(*[45] * 8)},
                           scheduling=DEFAULT, now=NOW)
    assert [d.percent for d in found] == [0.0, 45.0]


def test_nodes_that_cannot_take_the_pod_score_zero_and_do_not_shift_the_ranking() -> None:
    nodes = [whole("full", free=0), whole("other", free=8, product=H100), whole("fits", free=3)]
    assert scores(wants(count=2, product=A100), nodes) == {"full": 0, "other": 0, "fits": 10}


@pytest.mark.parametrize(
    ("weights", "band"),
    [({"migFit": 1.0, "utilization": 1.0}, 3), ({"migFit": 1.0, "utilization": 0.0}, 1),
     ({"migFit": 0.0, "utilization": 1.0}, 11), ({"migFit": 2.0, "utilization": 1.0}, 2),
     ({"migFit": 1.0, "utilization": 4.0}, 9)],
)
def test_weights_set_how_far_utilization_reaches_inside_a_fit_class(weights: dict[str, float], band: int) -> None:
    assert band_width(policy_with(weights=weights).scheduling.weights) == band


def test_without_utilization_weight_only_the_fit_counts() -> None:
    scheduling = policy_with(weights={"migFit": 1.0, "utilization": 0.0}).scheduling
    nodes = [whole(str(free), free=free) for free in range(1, 9)]
    found = scores(wants(), nodes, {"1": util(*[90] * 8)}, scheduling)
    assert [found[str(free)] for free in range(1, 9)] == [10, 9, 8, 7, 6, 5, 4, 3]


def test_without_fit_weight_only_utilization_counts() -> None:
    scheduling = policy_with(weights={"migFit": 0.0, "utilization": 1.0}).scheduling
    nodes = [whole("tight", free=1), whole("loose", free=8), whole("middle", free=4)]
    found = scores(wants(), nodes, {"tight": util(*[100] * 8), "loose": util(*[0] * 8), "middle": util(*[50] * 8)},
                   scheduling)
    assert found == {"loose": 10, "middle": 5, "tight": 0}


def test_both_weights_zero_means_no_opinion() -> None:
    scheduling = policy_with(weights={"migFit": 0.0, "utilization": 0.0}).scheduling
    assert set(scores(wants(), [whole("a", free=1), whole("b", free=8)], scheduling=scheduling).values()) == {0}


def test_spread_prefers_the_emptiest_node() -> None:
    scheduling = policy_with(fit="spread").scheduling
    nodes = [whole("empty", free=8), whole("tight", free=2), whole("half", free=4)]
    found = scores(wants(count=2), nodes, scheduling=scheduling)
    assert found["empty"] > found["half"] > found["tight"]


def test_explanations_agree_with_the_scores() -> None:
    nodes = [whole("a", free=2), whole("b", free=4), whole("full", free=0)]
    utilization = {"a": util(*[20] * 8), "b": util(*[80] * 8)}
    details = explain_scores(wants(count=2), nodes, utilization=utilization, scheduling=DEFAULT, now=NOW)
    assert [d.score for d in details] == score_nodes(wants(count=2), nodes, utilization=utilization,
                                                     scheduling=DEFAULT, now=NOW)
    assert [(d.node, d.fit_key, d.fit_class, d.percent) for d in details] == [
        ("a", (0,), 0, 20.0), ("b", (2,), 1, 80.0), ("full", (), -1, None)]


node_states = st.builds(
    lambda i, total, free, product, percent: (
        NodeGpuState(f"n{i}", product, {GPU: total}, {GPU: total - min(free, total)}, physical_gpus=total),
        percent,
    ),
    st.integers(0, 10_000), st.sampled_from([1, 2, 4, 8, 16]), st.integers(0, 16), st.sampled_from([A100, H100]),
    st.none() | st.floats(0, 100),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(node_states, min_size=1, max_size=25, unique_by=lambda n: n[0].name), st.sampled_from([1, 2, 4, 8]),
       st.sampled_from([(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (1.0, 3.0), (3.0, 0.5)]),
       st.sampled_from(["binpack", "spread"]))
def test_scores_are_integers_0_to_10_and_a_better_fit_never_scores_lower(
    nodes: list[tuple[NodeGpuState, float | None]], count: int, weights: tuple[float, float], fit: str
) -> None:
    scheduling = policy_with(weights={"migFit": weights[0], "utilization": weights[1]}, fit=fit).scheduling
    states = [n for n, _ in nodes]
    utilization = {n.name: util(*[p] * 16) for n, p in nodes if p is not None}
    details = explain_scores(wants(count=count), states, utilization=utilization, scheduling=scheduling, now=NOW)
    assert all(isinstance(d.score, int) and 0 <= d.score <= 10 for d in details)
    ranked = [d for d in details if d.fit_class >= 0]
    assert all(d.fit_class == -1 and d.score == 0 for d in details if d not in ranked)
    for better in ranked:
        for worse in ranked:
            if better.fit_class < worse.fit_class:
                assert better.score >= worse.score


# ------------------------------------------------------------------------------------------------------- packing

Picker = Callable[[GpuRequest, list[NodeGpuState], random.Random], NodeGpuState]


def gpuguard_pick(utilization: dict[str, NodeUtilization]) -> Picker:
    def pick(request: GpuRequest, fits: list[NodeGpuState], rnd: random.Random) -> NodeGpuState:
        found = score_nodes(request, fits, utilization=utilization, scheduling=DEFAULT, now=NOW)
        best = max(found)
        return rnd.choice([s for s, score in zip(fits, found) if score == best])

    return pick


def least_allocated(request: GpuRequest, fits: list[NodeGpuState], rnd: random.Random) -> NodeGpuState:
    """kube-scheduler's default: the node left with the largest free share (ties at random)."""
    resource, count = request.resources[0]
    share = [(s.free_of(resource) - count) / s.allocatable[resource] for s in fits]
    return rnd.choice([s for s, f in zip(fits, share) if f == max(share)])


def best_fit(request: GpuRequest, fits: list[NodeGpuState], rnd: random.Random) -> NodeGpuState:
    resource, count = request.resources[0]
    left = [s.free_of(resource) - count for s in fits]
    return rnd.choice([s for s, f in zip(fits, left) if f == min(left)])


def placed_before_first_unschedulable(pick: Picker, seed: int, *, nodes: int = 60) -> int:
    rnd = random.Random(seed)
    cluster = [NodeGpuState(f"n{i}", A100, {GPU: 8}, {}, physical_gpus=8) for i in range(nodes)]
    placed = 0
    while True:
        request = wants(count=rnd.choices([1, 2, 4, 8], [40, 25, 20, 15])[0])
        fits = [s for s in cluster if fit_refusal(request, s) is None]
        if not fits:
            return placed
        chosen = pick(request, fits, rnd)
        cluster[cluster.index(chosen)] = bind(chosen, request).state
        placed += 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_packing_keeps_whole_nodes_free_for_big_pods(seed: int) -> None:
    noise = random.Random(seed)
    utilization = {f"n{i}": util(*[noise.choice([0, 30, 60, 90])] * 8) for i in range(60)}
    ours = placed_before_first_unschedulable(gpuguard_pick(utilization), seed)
    spread = placed_before_first_unschedulable(least_allocated, seed)
    best = placed_before_first_unschedulable(best_fit, seed)
    assert ours >= 2 * spread
    assert ours >= 0.95 * best

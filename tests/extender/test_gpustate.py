"""The pure node GPU state: what a pod asks for, what a node has free, where MIG slices sit, bind and release."""

from __future__ import annotations

from typing import Any

import pytest

from gpuguard.policy import mig
from gpuguard.policy.gpustate import (
    GpuRequest,
    MigGpu,
    MigSlice,
    NodeGpuState,
    ProductTerm,
    SliceRef,
    bind,
    catalog_gpu,
    geometry_of,
    gpu_request,
    observed_geometry,
    product_refusal,
    release,
    MAX_GPUS_PER_NODE,
    synthesize_layout,
    with_used,
)

H100 = "NVIDIA-H100-80GB-HBM3"


def pod(*containers: dict[str, Any], init: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {"spec": {"containers": list(containers), "initContainers": init or [], **spec}}


def container(name: str = "kserve-container", limits: dict[str, Any] | None = None,
              requests: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    resources = {k: v for k, v in (("limits", limits), ("requests", requests)) if v is not None}
    return {"name": name, "resources": resources, **extra}


# ------------------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (pod(container(limits={"nvidia.com/gpu": "2", "cpu": "4"})), (("nvidia.com/gpu", 2),)),
        (pod(container(limits={"nvidia.com/gpu": 1}, requests={"nvidia.com/gpu": 1})), (("nvidia.com/gpu", 1),)),
        (pod(container(limits={"nvidia.com/mig-1g.10gb": "1"}), container("queue-proxy", requests={"cpu": "25m"})),
         (("nvidia.com/mig-1g.10gb", 1),)),
        (pod(container(limits={"nvidia.com/gpu": "1"}), container("worker", limits={"nvidia.com/gpu": "2"})),
         (("nvidia.com/gpu", 3),)),
        # a regular init container's peak counts only when it is larger than the app containers
        (pod(container(limits={"nvidia.com/gpu": "1"}), init=[container("warmup", limits={"nvidia.com/gpu": "4"})]),
         (("nvidia.com/gpu", 4),)),
        (pod(container(limits={"nvidia.com/gpu": "2"}), init=[container("warmup", limits={"nvidia.com/gpu": "1"})]),
         (("nvidia.com/gpu", 2),)),
        # a sidecar (restartable init container) runs beside the app containers
        (pod(container(limits={"nvidia.com/gpu": "1"}),
             init=[container("sidecar", limits={"nvidia.com/gpu": "1"}, restartPolicy="Always")]),
         (("nvidia.com/gpu", 2),)),
        (pod(container(limits={"cpu": "1"})), ()),
        (pod(container(limits={"nvidia.com/gpu": "0"})), ()),
        (pod(container(limits={"nvidia.com/gpu.shared": "1", "nvidia.com/mig-3g.40gb": "1"})),
         (("nvidia.com/gpu.shared", 1), ("nvidia.com/mig-3g.40gb", 1))),
    ],
)
def test_effective_gpu_requests_follow_kube_scheduler(spec: dict[str, Any], expected: tuple[Any, ...]) -> None:
    request = gpu_request(spec)
    assert request.resources == expected
    assert request.problem == ""


def test_a_fractional_gpu_quantity_is_reported_not_guessed() -> None:
    request = gpu_request(pod(container(limits={"nvidia.com/gpu": "500m"})))
    assert "500m" in request.problem and "nvidia.com/gpu" in request.problem
    assert request.resources == ()


def test_missing_or_null_sections_read_as_no_request() -> None:
    assert gpu_request({}).resources == ()
    assert gpu_request({"spec": {"containers": None, "initContainers": [None]}}).resources == ()


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}}}


def expr(operator: str, *values: str, key: str = "nvidia.com/gpu.product") -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


@pytest.mark.parametrize(
    ("spec", "product", "admitted"),
    [
        ({"nodeSelector": {"nvidia.com/gpu.product": H100}}, H100, True),
        ({"nodeSelector": {"nvidia.com/gpu.product": H100}}, "Tesla-T4", False),
        ({"nodeSelector": {"nvidia.com/gpu.product": H100}}, "", False),
        ({"affinity": affinity([expr("In", H100, "NVIDIA-H200")])}, "NVIDIA-H200", True),
        ({"affinity": affinity([expr("In", H100)])}, "Tesla-T4", False),
        ({"affinity": affinity([expr("NotIn", "Tesla-T4")])}, "Tesla-T4", False),
        ({"affinity": affinity([expr("NotIn", "Tesla-T4")])}, H100, True),
        ({"affinity": affinity([expr("Exists")])}, "", False),
        ({"affinity": affinity([expr("DoesNotExist")])}, "", True),
        # terms are ORed: one term that does not mention the product admits every product
        ({"affinity": affinity([expr("In", H100)], [expr("In", "x", key="zone")])}, "Tesla-T4", True),
        ({"affinity": affinity([expr("In", H100)], [expr("In", "Tesla-T4")])}, "Tesla-T4", True),
    ],
)
def test_gpu_product_constraints_match_node_labels(spec: dict[str, Any], product: str, admitted: bool) -> None:
    request = gpu_request({"spec": {"containers": [container(limits={"nvidia.com/gpu": "1"})], **spec}})
    assert (product_refusal(request, product) is None) is admitted


def test_product_term_combines_in_and_notin() -> None:
    term = ProductTerm(allowed=frozenset({"a", "b"}), denied=frozenset({"b"}))
    assert [term.admits(p) for p in ("a", "b", "c")] == [True, False, False]


# ------------------------------------------------------------------------------------------------ MIG placements


@pytest.mark.parametrize(
    ("model", "counts", "gpus", "layout"),
    [
        # H100 all-balanced fits one GPU only with the 3g instance at slot 4: 1g instances cannot start at 7
        ("H100-80GB", {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}, 1,
         [[("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3), ("3g.40gb", 4)]]),
        # two all-balanced GPUs stay two all-balanced GPUs (mig-parted applies one layout to every GPU)
        ("A100-40GB", {"3g.20gb": 2, "2g.10gb": 2, "1g.5gb": 4}, 2,
         [[("2g.10gb", 0), ("1g.5gb", 2), ("1g.5gb", 3), ("3g.20gb", 4)]] * 2),
        # one all-balanced GPU and one all-1g GPU: each GPU in turn takes what fits, largest first
        ("H100-80GB", {"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 9}, 2,
         [[("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3), ("3g.40gb", 4)], [("1g.10gb", s) for s in range(7)]]),
        ("RTX-PRO-6000", {"2g.48gb": 1, "1g.24gb": 2}, 1, [[("2g.48gb", 0), ("1g.24gb", 6), ("1g.24gb", 9)]]),
        ("B200", {"3g.90gb": 1, "2g.45gb": 1, "1g.23gb": 2}, 1,
         [[("2g.45gb", 0), ("1g.23gb", 2), ("1g.23gb", 3), ("3g.90gb", 4)]]),
        ("H100-80GB", {"1g.10gb": 7}, 1, [[("1g.10gb", s) for s in range(7)]]),
        ("H100-80GB", {"1g.10gb": 8}, 2, [[("1g.10gb", s) for s in range(4)]] * 2),  # an even split fits
        ("H100-80GB", {"1g.10gb": 8}, 1, [[("1g.10gb", s) for s in range(7)], [("1g.10gb", 0)]]),  # one spills
        ("A100-40GB", {"3g.20gb": 2}, 1, [[("3g.20gb", 0), ("3g.20gb", 4)]]),
        ("A100-80GB", {"1g.20gb": 4}, 1, [[("1g.20gb", 0), ("1g.20gb", 2), ("1g.20gb", 4), ("1g.20gb", 6)]]),
        ("H200-141GB", {"7g.141gb": 2}, 2, [[("7g.141gb", 0)], [("7g.141gb", 0)]]),
        ("A30", {"2g.12gb": 1, "1g.6gb": 2}, 1, [[("2g.12gb", 0), ("1g.6gb", 2), ("1g.6gb", 3)]]),
    ],
)
def test_synthesized_layouts_use_the_catalog_start_slots(
    model: str, counts: dict[str, int], gpus: int, layout: list[list[tuple[str, int]]]
) -> None:
    found = mig.model_named(model)
    assert found is not None
    result = synthesize_layout(found, counts, gpus=gpus)
    assert [[(s.profile, s.start) for s in g.slices] for g in result] == layout
    for gpu in result:
        for s in gpu.slices:
            profile = found.profile(s.profile)
            assert profile is not None and s.start in profile.starts and s.size == profile.size


def test_an_implausible_node_is_synthesized_in_bounded_time_and_size() -> None:
    """A Node claiming a billion MIG instances on a billion GPUs (a broken device plugin, a hostile request) gets
    at most what MAX_GPUS_PER_NODE GPUs could hold, at once, instead of hanging the extender."""
    found = mig.model_named("H100-80GB")
    assert found is not None
    result = synthesize_layout(found, {"1g.10gb": 10**9, "3g.40gb": 2**63 - 1}, gpus=10**9)
    assert len(result) <= 2 * MAX_GPUS_PER_NODE
    assert sum(len(g.slices) for g in result) == (7 + 2) * MAX_GPUS_PER_NODE


@pytest.mark.parametrize(
    ("model", "held_slots", "block"),
    [
        ("H100-80GB", [], 8),
        ("H100-80GB", [0], 4),  # 4g/3g still fit at start 4
        ("H100-80GB", [0, 4], 2),  # 2-slot blocks at 2 or 6
        ("H100-80GB", [0, 2, 4, 6], 1),
        ("H100-80GB", [1, 3, 5, 7], 1),
        ("H100-80GB", [0, 1, 2, 3, 4, 5, 6], 0),  # slot 7 is free, but no profile starts there
        ("A30", [3], 2),
        ("RTX-PRO-6000", [], 12),
        ("RTX-PRO-6000", [0], 6),  # a 2g instance still fits at unit 6
        ("RTX-PRO-6000", [0, 6], 3),
    ],
)
def test_largest_block_follows_placement_rules(model: str, held_slots: list[int], block: int) -> None:
    found = mig.model_named(model)
    assert found is not None
    held = sum(1 << s for s in held_slots)
    assert geometry_of(found).largest_block(held) == block


def test_a_gpu_of_an_unknown_model_knows_only_its_own_placements() -> None:
    slices = (MigSlice("1g.40gb", 0, 2), MigSlice("1g.40gb", 2, 2), MigSlice("2g.80gb", 4, 4))
    geometry = observed_geometry(slices)
    assert geometry.slots == 8
    assert geometry.largest_block(0) == 4 and geometry.largest_block(0b1111_0000) == 2
    assert MigGpu(0, "GPU-0", "", slices).geometry == geometry
    assert observed_geometry(()).largest_block(0) == 0


def mig_node(*gpus: list[tuple[str, int, int, bool]], used: dict[str, int] | None = None,
             name: str = "n") -> NodeGpuState:
    model = mig.model_named("H100-80GB")
    assert model is not None
    rows = tuple(catalog_gpu(model, i, f"GPU-{i}", (MigSlice(p, s, z, b) for p, s, z, b in g))
                 for i, g in enumerate(gpus))
    allocatable: dict[str, int] = {}
    for g in gpus:
        for p, *_ in g:
            resource = mig.mig_resource_name(p)
            allocatable[resource] = allocatable.get(resource, 0) + 1
    return NodeGpuState(name, H100, allocatable, used, rows)


ALL_1G = [("1g.10gb", s, 1, False) for s in range(7)]


def test_free_mig_devices_are_allocatable_minus_pod_requests_when_pods_are_known() -> None:
    node = mig_node(ALL_1G, [("3g.40gb", 0, 4, False), ("3g.40gb", 4, 4, False)],
                    used={"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-3g.40gb": 1})
    assert node.free_of("nvidia.com/mig-1g.10gb") == 5
    assert node.free_of("nvidia.com/mig-3g.40gb") == 1
    assert node.held is not None and sum(node.held[0]) == 2 and sum(node.held[1]) == 1


def test_free_mig_devices_come_from_busy_flags_when_pods_are_unknown() -> None:
    busy = [("1g.10gb", s, 1, s < 3) for s in range(7)]
    node = mig_node(busy, used=None)
    assert node.free_of("nvidia.com/mig-1g.10gb") == 4
    assert node.held == ((True, True, True, False, False, False, False),)


def test_pods_take_busy_instances_first_then_pack_onto_the_fullest_gpu() -> None:
    gpu0 = [("1g.10gb", s, 1, s == 5) for s in range(7)]
    gpu1 = ALL_1G
    node = mig_node(gpu0, gpu1, used={"nvidia.com/mig-1g.10gb": 2})
    assert node.held is not None
    assert node.held[0][5]  # the busy one
    assert sum(node.held[0]) == 2 and sum(node.held[1]) == 0  # the second joins it on GPU 0


def test_a_new_slice_goes_where_it_strands_the_fewest_slots() -> None:
    # GPU 0 already has a held 3g; GPU 1 is untouched: packing takes the 1g on GPU 0
    gpu0 = [("3g.40gb", 0, 4, True), ("1g.10gb", 4, 1, False), ("1g.10gb", 5, 1, False)]
    node = mig_node(gpu0, ALL_1G, used=None)
    choice = node.mig_binpack["1g.10gb"]
    assert choice.ref.gpu == 0 and choice.slots_left == 3
    spread = node.mig_spread["1g.10gb"]
    assert spread.ref.gpu == 1 and spread.slots_left == 7


def test_within_a_gpu_the_slice_that_keeps_the_larger_block_free_wins() -> None:
    # slots 0-1 held; free 1g at 2, 3 (fragmenting the 2..3 pair either way) and at 4 (breaking the 4..7 block)
    gpu = [("2g.20gb", 0, 2, True), ("1g.10gb", 2, 1, False), ("1g.10gb", 4, 1, False)]
    node = mig_node(gpu, used=None)
    choice = node.mig_binpack["1g.10gb"]
    assert node.mig_gpus[0].slices[choice.ref.slice].start == 2
    assert choice.block_left == 4


def test_bind_and_release_are_pure_and_cheap_state_updates() -> None:
    node = NodeGpuState("n", "A100", {"nvidia.com/gpu": 8}, {})
    request = GpuRequest((("nvidia.com/gpu", 3),))
    bound = bind(node, request)
    assert bound.state.free_of("nvidia.com/gpu") == 5
    assert node.free_of("nvidia.com/gpu") == 8  # the original is untouched
    assert release(bound.state, request).free_of("nvidia.com/gpu") == 8


def test_bind_holds_the_slice_scoring_assumed_and_release_frees_exactly_it() -> None:
    gpu0 = [("3g.40gb", 0, 4, False), ("1g.10gb", 4, 1, False), ("1g.10gb", 5, 1, False)]
    node = mig_node(gpu0, ALL_1G, used={"nvidia.com/mig-3g.40gb": 1})
    request = GpuRequest((("nvidia.com/mig-1g.10gb", 1),))
    expected = node.mig_binpack["1g.10gb"].ref
    bound = bind(node, request)
    assert bound.slices == (expected,)
    assert bound.state.held is not None and bound.state.held[expected.gpu][expected.slice]
    assert bound.state.free_of("nvidia.com/mig-1g.10gb") == node.free_of("nvidia.com/mig-1g.10gb") - 1
    back = release(bound.state, request, bound.slices)
    assert back.held == node.held and back.free == node.free


def test_release_without_refs_frees_a_held_slice_of_that_profile() -> None:
    node = mig_node(ALL_1G, used={"nvidia.com/mig-1g.10gb": 3})
    after = release(node, GpuRequest((("nvidia.com/mig-1g.10gb", 1),)))
    assert after.free_of("nvidia.com/mig-1g.10gb") == 5
    assert after.held is not None and sum(after.held[0]) == 2


def test_binding_a_node_with_unknown_pods_starts_from_what_the_agent_reports() -> None:
    busy = [("1g.10gb", s, 1, s < 2) for s in range(7)]
    node = mig_node(busy, used=None)
    bound = bind(node, GpuRequest((("nvidia.com/mig-1g.10gb", 1),))).state
    assert bound.used == {"nvidia.com/mig-1g.10gb": 3}
    assert bound.free_of("nvidia.com/mig-1g.10gb") == 4


def test_with_used_rederives_everything_from_counts() -> None:
    node = mig_node(ALL_1G, used={"nvidia.com/mig-1g.10gb": 1})
    assert with_used(node, {}).free_of("nvidia.com/mig-1g.10gb") == 7
    assert with_used(node, {"nvidia.com/mig-1g.10gb": 7}).mig_binpack == {}


def test_slice_refs_point_into_the_state() -> None:
    node = mig_node(ALL_1G, used={})
    ref = node.mig_binpack["1g.10gb"].ref
    assert ref == SliceRef(0, 0)
    assert node.mig_uuids_with_free("1g.10gb") == ("GPU-0",)
    assert node.mig_uuids_with_free("3g.40gb") == ()

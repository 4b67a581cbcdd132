"""Node GPU state from Kubernetes objects: allocatable, GFD labels, the agent's annotation, and the bound pods."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import pytest

from gpuguard.policy.gpustate import gpu_request
from gpuguard.policy.scoring import filter_nodes
from scheduler_ext.inventory.nodes import node_facts
from scheduler_ext.inventory.pods import pod_usage
from scheduler_ext.inventory.store import InventoryStore
from tests.extender.conftest import INVENTORY_TIME, cluster_items, cluster_node, cluster_pods, policy_with

MIG_1G, MIG_2G, MIG_3G = "nvidia.com/mig-1g.10gb", "nvidia.com/mig-2g.20gb", "nvidia.com/mig-3g.40gb"


def loaded_store(**kwargs: Any) -> InventoryStore:
    store = InventoryStore(**kwargs)
    store.replace_nodes(i for i in cluster_items() if i["kind"] == "Node")
    store.replace_pods(cluster_pods())
    return store


def test_allocatable_gpu_resources_and_gfd_labels_are_read() -> None:
    facts = node_facts(cluster_node("gpu-h100-mig-a"))
    state = facts.state
    assert facts.version == "90211" and facts.problem == ""
    assert state.product == "NVIDIA-H100-80GB-HBM3"
    assert state.allocatable == {MIG_1G: 8, MIG_2G: 1, MIG_3G: 1}  # cpu, memory, pods are not GPU resources
    assert state.physical_gpus == 2 and not state.mig_single


def test_mig_placements_come_from_the_agent_annotation() -> None:
    state = node_facts(cluster_node("gpu-h100-mig-a")).state
    layout = [[(s.profile, s.start, s.size, s.busy) for s in g.slices] for g in state.mig_gpus]
    assert layout[0] == [("3g.40gb", 0, 4, True), ("2g.20gb", 4, 2, False), ("1g.10gb", 6, 1, False)]
    assert layout[1][0] == ("1g.10gb", 0, 1, True) and len(layout[1]) == 7
    assert {g.model for g in state.mig_gpus} == {"H100-80GB"}
    assert all(g.uuid.startswith("GPU-") for g in state.mig_gpus)


def test_without_an_annotation_placements_are_synthesized_from_allocatable() -> None:
    state = node_facts(cluster_node("gpu-h100-mig-b")).state
    assert [[(s.profile, s.start) for s in g.slices] for g in state.mig_gpus] == [[("1g.10gb", s) for s in range(7)]]
    assert state.reported is None


def test_whole_gpu_uuids_and_reported_utilization_come_from_the_annotation() -> None:
    state = node_facts(cluster_node("gpu-a100-0")).state
    assert len(state.whole_gpus) == 8
    assert state.reported is not None
    assert state.reported.whole == (0.0, 0.0, 5.0, 10.0, 85.0, 90.0, 90.0, 95.0)
    assert state.reported.newest == INVENTORY_TIME


def test_time_sliced_nodes_count_replicas() -> None:
    state = node_facts(cluster_node("gpu-t4-shared")).state
    assert state.allocatable == {"nvidia.com/gpu": 4} and state.product == "Tesla-T4"


@pytest.mark.parametrize(
    "annotation",
    ['{"v": 2, "ts": "2026-03-02T10:00:00Z", "gpus": []}', "not json", '{"v": 1, "ts": "x", "gpus": []}'],
)
def test_a_bad_annotation_is_a_reported_problem_and_allocatable_still_counts(annotation: str) -> None:
    node = cluster_node("gpu-h100-mig-a")
    node["metadata"]["annotations"]["gpuguard.io/gpu-inventory"] = annotation
    facts = node_facts(node)
    assert "gpuguard.io/gpu-inventory" in facts.problem
    assert facts.state.allocatable[MIG_1G] == 8
    synthesized = [[(s.profile, s.start) for s in g.slices] for g in facts.state.mig_gpus]  # on the 2 GPUs GFD counts
    assert synthesized == [[("2g.20gb", 0), ("1g.10gb", 2), ("1g.10gb", 3), ("3g.40gb", 4)],
                           [("1g.10gb", s) for s in range(6)]]


def test_mig_single_strategy_is_recognised() -> None:
    node = cluster_node("gpu-h100-mig-b")
    node["metadata"]["labels"].update({"nvidia.com/mig.strategy": "single",
                                       "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"})
    node["status"]["allocatable"] = {"nvidia.com/gpu": "7"}
    state = node_facts(node).state
    assert state.mig_single and state.allocatable == {"nvidia.com/gpu": 7} and state.mig_gpus == ()


@pytest.mark.parametrize(
    ("name", "held"),
    [
        ("llama-a-predictor-5f6d7c8b9a-x7k2p", (("nvidia.com/gpu", 2),)),
        ("batch-eval-predictor-5f6d7c8b9a-done1", None),  # Succeeded: its GPUs are free again
        ("pending-predictor-5f6d7c8b9a-zzzzz", None),  # not bound yet
    ],
)
def test_only_bound_running_pods_hold_gpus(name: str, held: tuple[tuple[str, int], ...] | None) -> None:
    pod = next(p for p in cluster_pods() if p["metadata"]["name"] == name)
    usage = pod_usage(pod)
    assert (usage.resources if usage else None) == held


def test_pods_bound_to_a_node_reduce_its_free_gpus() -> None:
    store = loaded_store()
    a100 = store.state("gpu-a100-0")
    assert a100 is not None and a100.free_of("nvidia.com/gpu") == 4
    idle = store.state("gpu-a100-1")
    assert idle is not None and idle.free_of("nvidia.com/gpu") == 8
    mig = store.state("gpu-h100-mig-a")
    assert mig is not None
    assert (mig.free_of(MIG_1G), mig.free_of(MIG_2G), mig.free_of(MIG_3G)) == (7, 1, 0)
    assert store.ready and store.node_count == 6 and store.pod_count == 4


def test_pod_events_update_only_what_changed() -> None:
    store = loaded_store()
    pod = next(p for p in cluster_pods() if p["metadata"]["name"] == "pending-predictor-5f6d7c8b9a-zzzzz")
    before = store.state("gpu-a100-1")
    bound = copy.deepcopy(pod)
    bound["spec"]["nodeName"], bound["status"]["phase"] = "gpu-a100-1", "Running"
    store.upsert_pod(bound)
    after = store.state("gpu-a100-1")
    assert after is not None and after.free_of("nvidia.com/gpu") == 7 and after is not before
    untouched = store.state("gpu-a100-0")
    store.upsert_pod(bound)  # the same pod again changes nothing
    assert store.state("gpu-a100-0") is untouched and store.state("gpu-a100-1") is after
    finished = copy.deepcopy(bound)
    finished["status"]["phase"] = "Failed"
    store.upsert_pod(finished)
    assert store.state("gpu-a100-1").free_of("nvidia.com/gpu") == 8  # type: ignore[union-attr]


def test_a_deleted_pod_frees_its_gpus_at_once() -> None:
    store = loaded_store()
    pod = next(p for p in cluster_pods() if p["metadata"]["name"] == "llama-a-predictor-5f6d7c8b9a-x7k2p")
    store.delete_pod(pod)
    assert store.state("gpu-a100-0").free_of("nvidia.com/gpu") == 6  # type: ignore[union-attr]


def test_node_events_replace_and_remove_nodes() -> None:
    store = loaded_store()
    node = cluster_node("gpu-a100-1")
    node["metadata"]["resourceVersion"] = "99999"
    node["status"]["allocatable"]["nvidia.com/gpu"] = "4"  # two GPUs went bad
    store.upsert_node(node)
    assert store.state("gpu-a100-1").allocatable == {"nvidia.com/gpu": 4}  # type: ignore[union-attr]
    store.delete_node(node)
    assert store.state("gpu-a100-1") is None
    assert store.states_for_names(["gpu-a100-1", "gpu-a100-0"])[0] is None


def test_full_node_requests_reuse_states_whose_resource_version_did_not_change() -> None:
    store = loaded_store()
    nodes = [i for i in cluster_items() if i["kind"] == "Node"]
    first = store.states_for_objects(nodes)
    again = store.states_for_objects(json.loads(json.dumps(nodes)))
    assert all(a is b for a, b in zip(first, again))
    changed = json.loads(json.dumps(nodes))
    changed[2]["metadata"]["resourceVersion"] = "1"
    third = store.states_for_objects(changed)
    assert third[2] is not first[2] and third[3] is first[3]
    assert [s.free_of("nvidia.com/gpu") for s in first[2:4]] == [4, 8]  # pods from the store apply


def test_full_node_requests_without_a_pod_source_use_the_agents_busy_flags() -> None:
    store = InventoryStore(pods_known=False)
    states = store.states_for_objects([cluster_node("gpu-h100-mig-a"), cluster_node("gpu-a100-0")])
    assert states[0].used is None
    assert states[0].free_of(MIG_1G) == 7 and states[0].free_of(MIG_3G) == 0
    assert states[1].free_of("nvidia.com/gpu") == 8  # whole GPUs: kube-scheduler's own fit already checked


def test_filtering_reserves_nothing() -> None:
    store = loaded_store()
    states = store.states_for_names(["gpu-a100-0", "gpu-a100-1"])
    known = [s for s in states if s is not None]
    request = gpu_request(json.loads(json.dumps(cluster_pods()[0])))
    generation = store.generation
    for _ in range(3):
        passed, _ = filter_nodes(request, known, utilization={}, scheduling=policy_with().scheduling,
                                 now=INVENTORY_TIME)
        assert [s.name for s in passed] == ["gpu-a100-0", "gpu-a100-1"]
    assert store.generation == generation
    assert store.state("gpu-a100-0").free_of("nvidia.com/gpu") == 4  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------- models and the catalog


def mig_node(product: str, allocatable: dict[str, int], devices: Sequence[tuple[str, int, int, bool]] = ()) -> Any:
    """A one-GPU MIG node; `devices` (profile, start, size, busy) become the agent's annotation when given."""
    annotations = {}
    if devices:
        inventory = {"v": 1, "ts": "2026-03-02T10:00:00Z", "driver": "590.10", "gpus": [{
            "index": 0, "uuid": "GPU-0", "product": product, "memoryMiB": 200_000, "utilPercent": None,
            "mig": {"enabled": True, "devices": [{"profile": p, "start": s, "size": z, "uuid": f"MIG-{s}", "busy": b}
                                                  for p, s, z, b in devices]}}]}
        annotations["gpuguard.io/gpu-inventory"] = json.dumps(inventory)
    return {"kind": "Node", "metadata": {"name": "n", "resourceVersion": "1", "annotations": annotations,
                                         "labels": {"nvidia.com/gpu.product": product, "nvidia.com/gpu.count": "1"}},
            "status": {"allocatable": {f"nvidia.com/mig-{p}": str(n) for p, n in allocatable.items()}}}


def test_an_unknown_models_layout_is_taken_from_the_annotation_and_the_node_is_not_refused() -> None:
    devices = [("1g.40gb", 0, 2, False), ("1g.40gb", 2, 2, True), ("2g.80gb", 4, 4, False)]
    state = node_facts(mig_node("NVIDIA-Future-GPU", {"1g.40gb": 2, "2g.80gb": 1}, devices)).state
    (gpu,) = state.mig_gpus
    assert gpu.model == "" and [(s.profile, s.start, s.size, s.busy) for s in gpu.slices] == devices
    assert gpu.slots == 8 and gpu.largest_block(0b0000_0011) == 4, "the reported placements are the geometry"
    request = gpu_request({"spec": {"containers": [{"resources": {"limits": {"nvidia.com/mig-1g.40gb": "1"}}}]}})
    kept, refused = filter_nodes(request, [state], utilization={}, scheduling=policy_with().scheduling, now=0.0)
    assert [s.name for s in kept] == ["n"] and not refused
    choice = state.mig_binpack["1g.40gb"]
    assert gpu.slices[choice.ref.slice].start == 0, "the busy instance is held, the free one is taken"


def test_placements_that_contradict_the_catalogs_start_slots_are_taken_as_reported() -> None:
    devices = [("1g.24gb", 0, 6, False), ("1g.24gb", 6, 6, False)]  # a 12-unit grid, not the catalog's 2 slots
    (gpu,) = node_facts(mig_node("NVIDIA-RTX-PRO-5000-Blackwell", {"1g.24gb": 2}, devices)).state.mig_gpus
    assert gpu.model == "" and gpu.slots == 12
    (fits,) = node_facts(mig_node("NVIDIA-RTX-PRO-5000-Blackwell", {"1g.24gb": 2},
                                  [("1g.24gb", 0, 1, False), ("1g.24gb", 1, 1, False)])).state.mig_gpus
    assert fits.model == "RTX-PRO-5000" and fits.slots == 2


def test_a_policy_that_adds_a_model_gives_its_nodes_a_layout_at_once() -> None:
    from gpuguard.policy.loading import parse_policy
    from tests.conftest import DATA

    policy = parse_policy((DATA / "policy-mig-models.yaml").read_text())
    store = InventoryStore(pods_known=False)
    store.upsert_node(mig_node("NVIDIA-Next-GPU", {"1g.25gb": 7}))
    before = store.generation
    assert store.state("n").mig_gpus == ()  # type: ignore[union-attr]
    store.use_catalog(policy.catalog)
    state = store.state("n")
    assert state is not None and store.generation == before + 1
    assert [[s.start for s in g.slices] for g in state.mig_gpus] == [list(range(7))]
    assert state.mig_gpus[0].model == "NEXT-GPU"
    store.use_catalog(policy.catalog)
    assert store.generation == before + 1, "the same catalog again changes nothing"
def with_mig_activity(name: str, percents: list[list[float | None]], *, rename: str = "") -> dict[str, Any]:
    """The node with `utilPercent` on its MIG devices, GPU by GPU in device order (None: left out)."""
    node = copy.deepcopy(cluster_node(name))
    annotations = node["metadata"]["annotations"]
    inventory = json.loads(annotations["gpuguard.io/gpu-inventory"])
    for gpu, values in zip((g for g in inventory["gpus"] if g["mig"]["enabled"]), percents):
        for device, value in zip(gpu["mig"]["devices"], values):
            if value is not None:
                device["utilPercent"] = value
    annotations["gpuguard.io/gpu-inventory"] = json.dumps(inventory)
    if rename:
        node["metadata"]["name"] = rename
    return node


def test_mig_activity_in_the_annotation_becomes_each_gpus_utilization_weighted_by_compute_slices() -> None:
    # GPU 0: 3g.40gb at 80 %, 2g.20gb at 50 %, 1g.10gb idle -> (3*80 + 2*50 + 0) / 7 compute slices.
    state = node_facts(with_mig_activity("gpu-h100-mig-a", [[80, 50, 0], [100] + [None] * 6])).state
    assert state.reported is not None
    by_uuid = {s.uuid: s for s in state.reported.samples}
    first, second = (by_uuid[g.uuid] for g in state.mig_gpus)
    assert first.mig and first.percent == pytest.approx((3 * 80 + 2 * 50) / 7)
    assert second.percent == pytest.approx(100 / 7)  # the others measured nothing: idle, as in Prometheus' fold
    assert first.at == INVENTORY_TIME


def test_an_annotation_without_mig_activity_reports_no_mig_utilization() -> None:
    state = node_facts(cluster_node("gpu-h100-mig-a")).state
    assert state.reported is None or not any(s.mig for s in state.reported.samples)


def test_the_extender_prefers_the_mig_node_whose_agent_reports_it_idle_when_prometheus_has_nothing() -> None:
    from gpuguard.policy.scoring import score_nodes

    busy = node_facts(with_mig_activity("gpu-h100-mig-a", [[100, 100, 100], [100] * 7], rename="busy")).state
    idle = node_facts(with_mig_activity("gpu-h100-mig-a", [[0, 0, 0], [0] * 7], rename="idle")).state
    request = gpu_request({"spec": {"containers": [{"name": "m", "resources": {"limits": {MIG_1G: "1"}}}]}})
    scheduling = policy_with().scheduling
    scores = score_nodes(request, [busy, idle], utilization={}, scheduling=scheduling, now=INVENTORY_TIME + 5)
    assert scores[1] > scores[0]
    stale = score_nodes(request, [busy, idle], utilization={}, scheduling=scheduling, now=INVENTORY_TIME + 3600)
    assert stale[0] == stale[1]  # too old to trust: both neutral

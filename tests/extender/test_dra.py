"""DRA nodes and claim pods: ResourceSlices as the NVIDIA DRA driver publishes them, ResourceClaims, the decisions.

The fixture `tests/data/extender/dra-cluster.json` follows the driver's device shapes (NVIDIA/k8s-dra-driver-gpu
cmd/gpu-kubelet-plugin/deviceinfo.go) and the resource.k8s.io/v1 schemas; `args-names-dra-mig.json` is the
ExtenderArgs kube-scheduler sends for a pod whose claim comes from a ResourceClaimTemplate.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gpuguard.contracts.extender import parse_args
from gpuguard.policy.dra import (
    ClaimBook,
    DraClasses,
    claim_shape,
    node_devices,
    pod_request,
    selector_terms,
    slice_facts,
)
from gpuguard.policy.gpustate import GpuSample, NodeUtilization
from gpuguard.policy.scoring import filter_nodes, score_nodes
from scheduler_ext.extender import decide_filter_names, decide_priorities_names
from scheduler_ext.inventory.store import InventoryStore
from tests.extender.conftest import DATA, policy_with

MIG_1G, MIG_2G, MIG_3G = "nvidia.com/mig-1g.10gb", "nvidia.com/mig-2g.20gb", "nvidia.com/mig-3g.40gb"
PROFILE = "device.attributes['gpu.nvidia.com'].profile == '%s'"
NOW = 1_800_000_000.0
SCHEDULING = policy_with().scheduling


def dra_items() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads((DATA / "dra-cluster.json").read_text())["items"]
    return items


def of_kind(kind: str, items: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [i for i in (items if items is not None else dra_items()) if i["kind"] == kind]


def loaded(items: list[dict[str, Any]] | None = None) -> InventoryStore:
    items = items if items is not None else dra_items()
    store = InventoryStore()
    store.replace_nodes(of_kind("Node", items))
    store.replace_pods(of_kind("Pod", items))
    for kind in ("ResourceSlice", "ResourceClaim", "ResourceClaimTemplate"):
        store.replace_dra(kind, of_kind(kind, items))
    return store


def dra_args() -> dict[str, Any]:
    args: dict[str, Any] = json.loads((DATA / "args-names-dra-mig.json").read_text())
    return args


def args_bytes(args: dict[str, Any]) -> bytes:
    return json.dumps(args).encode()


def plain_gpu_pod(count: int) -> dict[str, Any]:
    """The same pod asking `nvidia.com/gpu` as an extended resource, without claims."""
    args = dra_args()
    pod = args["Pod"]
    pod["spec"].pop("resourceClaims")
    pod["status"].pop("resourceClaimStatuses")
    container = pod["spec"]["containers"][0]["resources"]
    container.pop("claims")
    container["limits"]["nvidia.com/gpu"] = str(count)
    args["NodeNames"] = [*args["NodeNames"], "cpu-0"]
    return args


# ------------------------------------------------------------------------------------------------------- node model


def test_a_dra_node_is_modelled_from_its_slice_devices_and_memory_slices() -> None:
    state = loaded().state("dra-h100-0")
    assert state is not None and state.dra
    assert state.allocatable == {"nvidia.com/gpu": 2, MIG_3G: 1, MIG_2G: 1, MIG_1G: 1}
    assert state.product == "NVIDIA-H100-80GB-HBM3"  # from productName, the Node has no GFD product label
    (gpu,) = state.mig_gpus
    assert gpu.model == "H100-80GB" and gpu.uuid == "GPU-4a7e2c61-0c1f-4d8e-9b3a-5f6e7d8c9b03"
    assert [(s.profile, s.start, s.size) for s in gpu.slices] == [("3g.40gb", 0, 4), ("2g.20gb", 4, 2),
                                                                  ("1g.10gb", 6, 1)]
    assert state.physical_gpus == 3 and len(state.whole_gpus) == 2


def test_devices_that_allocated_claims_hold_are_not_free() -> None:
    store = loaded()
    a100, h100 = store.state("dra-a100-0"), store.state("dra-h100-1")
    assert a100 is not None and h100 is not None
    assert a100.free == {"nvidia.com/gpu": 1}  # three of four held by busy-0's claim
    assert h100.free == {MIG_1G: 6}
    assert h100.held == ((True, False, False, False, False, False, False),)  # exactly the allocated memory slice


def test_a_deleted_claim_frees_its_devices_and_a_new_one_holds_them() -> None:
    store = loaded()
    busy = next(c for c in of_kind("ResourceClaim") if c["metadata"]["name"] == "busy-0-gpu-r8t2w")
    store.delete_dra("ResourceClaim", busy)
    assert store.state("dra-a100-0").free == {"nvidia.com/gpu": 4}  # type: ignore[union-attr]
    store.upsert_dra("ResourceClaim", busy)
    assert store.state("dra-a100-0").free == {"nvidia.com/gpu": 1}  # type: ignore[union-attr]


def test_a_whole_gpu_and_the_mig_devices_carved_from_it_exclude_each_other() -> None:
    items = dra_items()
    h100 = next(s for s in of_kind("ResourceSlice", items) if s["spec"]["nodeName"] == "dra-h100-0")
    parent = copy.deepcopy(h100["spec"]["devices"][0])
    parent["name"] = "gpu-2"
    parent["attributes"]["uuid"] = {"string": "GPU-4a7e2c61-0c1f-4d8e-9b3a-5f6e7d8c9b03"}
    h100["spec"]["devices"].append(parent)
    claims = of_kind("ResourceClaim", items)
    claims[0]["status"]["allocation"]["devices"]["results"] = [
        {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "dra-h100-0", "device": "gpu-2-mig-19-6-1"}]
    state = loaded(items).state("dra-h100-0")
    assert state is not None
    assert state.free["nvidia.com/gpu"] == 2  # gpu-2 has a held MIG device: not free as a whole GPU
    claims[0]["status"]["allocation"]["devices"]["results"][0]["device"] = "gpu-2"
    state = loaded(items).state("dra-h100-0")
    assert state is not None and state.free[MIG_3G] == 0 and state.free[MIG_1G] == 0


def test_only_the_newest_generation_of_a_pool_counts() -> None:
    (h100,) = [s for s in of_kind("ResourceSlice") if s["spec"]["nodeName"] == "dra-h100-1"]
    older = copy.deepcopy(h100)
    older["metadata"]["name"] += "-old"
    older["spec"]["devices"] = older["spec"]["devices"][:2]
    h100["spec"]["pool"]["generation"] = 2
    facts = [f for f in map(slice_facts, [older, h100]) if f is not None]
    assert len(node_devices(facts)["dra-h100-1"]) == 7


def test_slices_of_other_drivers_or_of_no_single_node_are_not_a_nodes_gpus() -> None:
    (h100,) = [s for s in of_kind("ResourceSlice") if s["spec"]["nodeName"] == "dra-h100-1"]
    other = copy.deepcopy(h100)
    other["spec"]["driver"] = "gpu.example.com"
    shared = copy.deepcopy(h100)
    del shared["spec"]["nodeName"]
    shared["spec"]["allNodes"] = True
    assert slice_facts(other) is None and slice_facts(shared) is None


def test_mig_devices_without_memory_slices_are_placed_by_the_catalog() -> None:
    items = dra_items()
    (h100,) = [s for s in of_kind("ResourceSlice", items) if s["spec"]["nodeName"] == "dra-h100-0"]
    for device in h100["spec"]["devices"]:
        device["capacity"] = {k: v for k, v in device["capacity"].items() if not k.startswith("memorySlice")}
    state = loaded(items).state("dra-h100-0")
    assert state is not None
    (gpu,) = state.mig_gpus
    assert gpu.model == "H100-80GB"
    assert sorted((s.profile, s.size) for s in gpu.slices) == [("1g.10gb", 1), ("2g.20gb", 2), ("3g.40gb", 4)]


# -------------------------------------------------------------------------------------------------- claim shapes


@pytest.mark.parametrize(("request_", "expected"), [
    ({"exactly": {"deviceClassName": "gpu.nvidia.com", "count": 2}}, (("nvidia.com/gpu", 2),)),
    ({"exactly": {"deviceClassName": "gpu.nvidia.com"}}, (("nvidia.com/gpu", 1),)),
    ({"exactly": {"deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression": PROFILE % "2g.20gb"}}]}},
     ((MIG_2G, 1),)),
    ({"exactly": {"deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
        "device.driver == 'gpu.nvidia.com' && device.attributes[\"gpu.nvidia.com\"].profile == \"1g.10gb\" && "
        "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('10Gi')) >= 0"}}]}}, ((MIG_1G, 1),)),
    ({"exactly": {"deviceClassName": "nic.example.com", "count": 4}}, ()),
])
def test_claim_requests_become_extended_resource_shapes(request_: dict[str, Any], expected: tuple[Any, ...]) -> None:
    shape = claim_shape({"devices": {"requests": [{"name": "r", **request_}]}})
    assert shape.known and shape.resources == expected


@pytest.mark.parametrize("request_", [
    {"firstAvailable": [{"name": "big", "deviceClassName": "gpu.nvidia.com"}]},
    {"exactly": {"deviceClassName": "gpu.nvidia.com", "allocationMode": "All"}},
    {"exactly": {"deviceClassName": "mig.nvidia.com"}},
    {"exactly": {"deviceClassName": "mig.nvidia.com", "selectors": [{"cel": {"expression":
        PROFILE % "1g.10gb" + " || " + PROFILE % "2g.20gb"}}]}},
])
def test_claims_whose_shape_is_not_certain_are_unknown(request_: dict[str, Any]) -> None:
    assert not claim_shape({"devices": {"requests": [{"name": "r", **request_}]}}).known


def test_selectors_on_another_driver_are_not_this_drivers() -> None:
    assert selector_terms(["device.driver == 'gpu.example.com'"]) is None
    assert selector_terms([PROFILE % "1g.10gb"]) == {"profile": "1g.10gb"}


def test_device_class_names_follow_the_policy() -> None:
    spec = {"devices": {"requests": [{"name": "r", "exactly": {"deviceClassName": "big-gpus"}}]}}
    assert claim_shape(spec, DraClasses(gpu="big-gpus")).resources == (("nvidia.com/gpu", 1),)
    assert claim_shape(spec).resources == ()


def test_a_claim_pod_is_read_through_the_claim_made_from_its_template() -> None:
    store = loaded()
    request = pod_request(dra_args()["Pod"], store.claims)
    assert request.claims and request.resources == ((MIG_1G, 1),)
    pod = dra_args()["Pod"]
    del pod["status"]["resourceClaimStatuses"]  # not made yet: the template says the same
    assert pod_request(pod, store.claims).resources == ((MIG_1G, 1),)
    assert pod_request(pod, ClaimBook()).resources == () and pod_request(pod, ClaimBook()).claims


# -------------------------------------------------------------------------------------------------------- decisions


def decide(store: InventoryStore, args: dict[str, Any], utilization: dict[str, NodeUtilization] | None = None,
           ) -> tuple[Any, list[int]]:
    parsed = parse_args(args_bytes(args))
    board = utilization or {}
    outcome = decide_filter_names(parsed, store.index, utilization=board, scheduling=SCHEDULING, now=NOW,
                                  claims=store.claims)
    _, scores = decide_priorities_names(parsed, store.index, utilization=board, scheduling=SCHEDULING, now=NOW,
                                        claims=store.claims)
    return outcome.result, scores


def test_a_claim_pod_is_never_refused_for_capacity_and_is_scored_by_mig_fit() -> None:
    result, scores = decide(loaded(), dra_args())
    assert result.node_names == ["dra-h100-0", "dra-h100-1", "dra-a100-0", "plugin-a100-0"]
    assert result.failed_nodes == {} and result.failed_and_unresolvable_nodes == {} and result.error == ""
    by_node = dict(zip(dra_args()["NodeNames"], scores))
    assert by_node["dra-h100-0"] == 10  # its only free 1g.10gb: the tightest fit
    assert 0 < by_node["dra-h100-1"] < by_node["dra-h100-0"]
    assert by_node["dra-a100-0"] == 0 and by_node["plugin-a100-0"] == 0  # no 1g.10gb there


def test_utilization_orders_dra_nodes_within_one_fit_class() -> None:
    items = dra_items()
    busy_claim = next(c for c in of_kind("ResourceClaim", items) if c["metadata"]["name"] == "busy-0-gpu-r8t2w")
    del busy_claim["status"]["allocation"]["devices"]["results"][0]  # dra-a100-0: two free, like dra-h100-0
    store = loaded(items)
    args = dra_args()
    args["Pod"]["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": "whole-gpu"}]
    args["NodeNames"] = ["dra-h100-0", "dra-a100-0"]
    store.upsert_dra("ResourceClaim", {"kind": "ResourceClaim", "metadata": {"namespace": "models", "name": "whole-gpu"},
                                       "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                                           "deviceClassName": "gpu.nvidia.com"}}]}}})
    h100, a100 = store.state("dra-h100-0"), store.state("dra-a100-0")
    assert h100 is not None and a100 is not None and h100.free_of("nvidia.com/gpu") == a100.free_of("nvidia.com/gpu")
    samples = {"dra-h100-0": NodeUtilization(tuple(GpuSample(u, 80.0, NOW) for u in h100.whole_gpus)),
               "dra-a100-0": NodeUtilization(tuple(GpuSample(u, 0.0, NOW) for u in a100.whole_gpus))}
    _, scores = decide(store, args, samples)
    assert scores == [8, 10]  # one fit class: the idle node first, the busy one at the bottom of the band
    _, unknown = decide(store, args, {})
    assert unknown == [10, 10]


def test_a_dra_node_whose_every_candidate_gpu_is_over_the_ceiling_is_refused() -> None:
    store = loaded()
    h100 = store.state("dra-h100-0")
    assert h100 is not None
    (parent,) = (g.uuid for g in h100.mig_gpus)
    hot = {"dra-h100-0": NodeUtilization((GpuSample(parent, 99.0, NOW, mig=True),))}
    result, _ = decide(store, dra_args(), hot)
    unresolvable = result.failed_and_unresolvable_nodes  # no eviction lowers the samples
    assert "dra-h100-0" in unresolvable and "utilization" in unresolvable["dra-h100-0"]
    assert "dra-h100-1" in result.node_names


def test_a_plain_gpu_pod_passes_dra_nodes_while_a_node_with_no_gpus_is_still_refused() -> None:
    """A DeviceClass's extendedResourceName lets kube-scheduler satisfy `nvidia.com/gpu` from slices (1.34+)."""
    result, scores = decide(loaded(), plain_gpu_pod(2))
    assert result.node_names == ["dra-h100-0", "dra-h100-1", "dra-a100-0", "plugin-a100-0"]
    assert result.failed_and_unresolvable_nodes == {"cpu-0": "node has no nvidia.com/gpu"}
    by_node = dict(zip(plain_gpu_pod(2)["NodeNames"], scores))
    assert by_node["dra-h100-0"] == 10  # exactly two free whole GPUs: the tightest fit
    assert by_node["dra-a100-0"] == 0  # one free GPU: kube-scheduler decides, gpuguard does not prefer it


def test_a_claim_pod_whose_claim_is_not_known_is_judged_neutrally() -> None:
    args = dra_args()
    args["Pod"]["status"]["resourceClaimStatuses"][0]["resourceClaimName"] = "not-made-yet"
    args["Pod"]["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] = "unknown-template"
    result, scores = decide(loaded(), args)
    assert result.node_names == args["NodeNames"] and scores == [0, 0, 0, 0]


def test_the_general_and_indexed_paths_agree_on_dra_nodes() -> None:
    store = loaded()
    for args in (dra_args(), plain_gpu_pod(1), plain_gpu_pod(3)):
        request = pod_request(args["Pod"], store.claims)
        states = [s for n in args["NodeNames"] if (s := store.state(n)) is not None]
        passed, _ = filter_nodes(request, states, utilization={}, scheduling=SCHEDULING, now=NOW)
        result, scores = decide(store, args)
        assert [s.name for s in passed] == result.node_names
        assert score_nodes(request, states, utilization={}, scheduling=SCHEDULING, now=NOW) == [
            sc for n, sc in zip(args["NodeNames"], scores) if store.state(n) is not None]

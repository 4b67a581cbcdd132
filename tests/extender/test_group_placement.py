"""Group-aware placement: a serving group's next pod goes to its product and topology domain, best fit kept inside."""

from __future__ import annotations

import asyncio
import copy
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gpuguard.policy.grouping import GroupPlacement, grouped_scores, placement_of, tier
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app
from scheduler_ext.inventory.sources import ClusterStateSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard
from tests.extender.conftest import DATA, policy_text

CLUSTER = DATA / "cluster-llm-groups.json"
WORKER = DATA / "args-names-llm-worker.json"
H100 = "NVIDIA-H100-80GB-HBM3"
CLIQUE = "nvidia.com/gpu.clique"
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def placement(domain: str | None = "a", product: str | None = H100) -> GroupPlacement:
    return GroupPlacement(domain, product, CLIQUE, 1)


@pytest.mark.parametrize(("labels", "expected"), [
    ({CLIQUE: "a", "nvidia.com/gpu.product": H100}, 2),
    ({CLIQUE: "b", "nvidia.com/gpu.product": H100}, 1),
    ({"nvidia.com/gpu.product": H100}, 1),
    ({CLIQUE: "a", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, 0),
    (None, -1),
])
def test_a_node_s_tier_is_its_domain_and_product_match(labels: dict[str, str] | None, expected: int) -> None:
    assert tier(placement(), labels) == expected


def test_the_group_s_domain_and_product_are_where_most_of_its_pods_run() -> None:
    labels = {"n1": {CLIQUE: "b", "nvidia.com/gpu.product": H100}, "n2": {CLIQUE: "a", "nvidia.com/gpu.product": H100},
              "n3": {CLIQUE: "b", "nvidia.com/gpu.product": H100}}
    found = placement_of(["n1", "n2", "n3", "gone"], labels.get, topology_key=CLIQUE)
    assert found == GroupPlacement("b", H100, CLIQUE, 3)
    assert placement_of(["gone"], labels.get, topology_key=CLIQUE) is None


def test_domain_nodes_outrank_the_rest_and_keep_their_own_order() -> None:
    scores, tiers = [10, 6, 9, 3, 10, 0], [1, 2, 2, 2, 0, -1]
    assert grouped_scores(scores, tiers) == [7, 9, 10, 8, 6, 0]


def test_scores_are_untouched_when_every_candidate_is_in_the_same_tier() -> None:
    assert grouped_scores([10, 7, 3], [1, 1, 1]) == [10, 7, 3]
    assert grouped_scores([10, 7, 0], [2, 2, -1]) == [10, 7, 0]


@given(st.lists(st.tuples(st.integers(0, 10), st.integers(-1, 2)), min_size=1, max_size=40))
def test_group_awareness_never_undoes_best_fit_within_a_tier(nodes: list[tuple[int, int]]) -> None:
    scores, tiers = [s for s, _ in nodes], [t for _, t in nodes]
    out = grouped_scores(scores, tiers)
    assert all(0 <= s <= 10 for s in out)
    for (s1, t1), o1 in zip(nodes, out):
        for (s2, t2), o2 in zip(nodes, out):
            if t1 == t2 != -1 and s1 > s2:
                assert o1 >= o2, "a better fit inside one tier never scores below a worse one"
            if len({t for t in tiers if t != -1}) > 1 and t1 > t2 >= 0 and o1 > 0:
                assert o1 > o2, "a higher tier always scores above a lower one"


# ---------------------------------------------------------------------------------------------------- over HTTP


@pytest.fixture
def make_client(aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
                tmp_path: Path) -> ClientFactory:
    async def make(**scheduling: Any) -> TestClient[Any, Any]:
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(policy_text(**scheduling))
        settings = ExtenderSettings(cluster_state=CLUSTER, policy_path=policy_file, reload_interval=0.05,
                                    state_interval=0.05)
        registry = CollectorRegistry()
        store = InventoryStore(pods_known=True)
        source = ClusterStateSource(CLUSTER, store)
        app = create_app(settings, policy=PolicySource(policy_file, registry=registry), registry=registry,
                         store=store, board=UtilizationBoard(), background=[lambda _: source.running(0.05)])
        return await aiohttp_client(app)

    return make


async def prioritize(client: TestClient[Any, Any], body: dict[str, Any]) -> dict[str, int]:
    for _ in range(100):
        reply = await client.get("/readyz")
        if reply.status == 200:
            break
        await asyncio.sleep(0.02)
    reply = await client.post("/prioritize", data=io.BytesIO(json.dumps(body).encode()),
                              headers={"Content-Type": "application/json"})
    assert reply.status == 200
    return {entry["Host"]: entry["Score"] for entry in await reply.json()}


def worker_args() -> dict[str, Any]:
    args: dict[str, Any] = json.loads(WORKER.read_text())
    return args


async def test_a_worker_goes_to_its_leader_s_nvlink_clique_first(make_client: ClientFactory) -> None:
    scores = await prioritize(await make_client(), worker_args())
    # h100-a1 (the leader's node, 4 GPUs left: exact fit) and h100-a2 are in the leader's clique; h100-b1 is an
    # exact fit too but in another clique; h100-c1 has no clique label.
    assert scores["h100-a1"] > scores["h100-a2"] > scores["h100-b1"] > scores["h100-c1"]


async def test_without_group_awareness_the_exact_fits_tie_across_cliques(make_client: ClientFactory) -> None:
    scores = await prioritize(await make_client(groupPlacement={"enabled": False}), worker_args())
    assert scores["h100-a1"] == scores["h100-b1"] > scores["h100-a2"]


async def test_a_pod_outside_any_group_is_scored_as_before(make_client: ClientFactory) -> None:
    args = worker_args()
    pod = copy.deepcopy(args["Pod"])
    for key in [k for k in pod["metadata"]["labels"] if k.startswith("leaderworkerset.sigs.k8s.io/")]:
        del pod["metadata"]["labels"][key]
    scores = await prioritize(await make_client(), {**args, "Pod": pod})
    assert scores["h100-a1"] == scores["h100-b1"]


async def test_the_topology_label_is_policy(make_client: ClientFactory) -> None:
    scores = await prioritize(await make_client(groupPlacement={"topologyKey": "topology.kubernetes.io/zone"}),
                              worker_args())
    # every node is in one zone: the domain no longer separates the exact fits
    assert scores["h100-a1"] == scores["h100-b1"]


def test_the_store_follows_a_group_s_bound_pods_as_they_come_and_go() -> None:
    items = json.loads(CLUSTER.read_text())["items"]
    store = InventoryStore(pods_known=True)
    store.replace_nodes([i for i in items if i["kind"] == "Node"])
    pods = [i for i in items if i["kind"] == "Pod"]
    store.replace_pods(pods)
    leader = pods[0]
    group = "llm-prod/lws/" + leader["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/group-key"]
    assert store.group_nodes(group) == ["h100-a1"]
    labels = store.node_labels("h100-a1")
    assert labels is not None and labels[CLIQUE] == "fabric-a.0"
    finished = copy.deepcopy(leader)
    finished["status"]["phase"] = "Succeeded"
    store.upsert_pod(finished)
    assert store.group_nodes(group) == []
    store.upsert_pod(leader)
    store.delete_pod(leader)
    assert store.group_nodes(group) == []

"""The extender over HTTP: kube-scheduler's payloads in both casings and modes, errors in the protocol's channel."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

import scheduler_ext.app
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app
from scheduler_ext.inventory.sources import ClusterStateSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard
from tests.extender.conftest import CLUSTER, INVENTORY_TIME, payload, policy_text

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
VLLM_FAILED = {
    "gpu-h100-mig-a": "pod selects nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB, node has NVIDIA-H100-80GB-HBM3",
    "gpu-h100-mig-b": "pod selects nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB, node has NVIDIA-H100-80GB-HBM3",
    "gpu-t4-shared": "pod selects nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB, node has Tesla-T4",
}


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    return Path(shutil.copy(CLUSTER, tmp_path / "cluster.json"))


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text())
    return path


@pytest.fixture
def make_client(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]], cluster_file: Path, policy_file: Path
) -> ClientFactory:
    async def make(*, source: bool = True, load: bool = True, **changes: Any) -> TestClient[Any, Any]:
        settings = replace(
            ExtenderSettings(cluster_state=cluster_file if source else None, policy_path=policy_file,
                             reload_interval=0.05, state_interval=0.05),
            **changes,
        )
        registry = CollectorRegistry()
        store = InventoryStore(pods_known=settings.has_node_source)
        background = []
        if source and load:
            state = ClusterStateSource(cluster_file, store)
            background.append(lambda _: state.running(settings.state_interval))
        app = create_app(settings, policy=PolicySource(policy_file, registry=registry), registry=registry,
                         store=store, board=UtilizationBoard(), background=background,
                         clock=lambda: INVENTORY_TIME + 30)
        return await aiohttp_client(app)

    return make


async def post(client: TestClient[Any, Any], path: str, body: bytes) -> tuple[int, Any]:
    reply = await client.post(path, data=io.BytesIO(body), headers={"Content-Type": "application/json"})
    return reply.status, await reply.json(content_type=None)


async def test_names_mode_filter_keeps_the_nodes_that_fit(make_client: ClientFactory) -> None:
    client = await make_client()
    status, reply = await post(client, "/filter", payload("names"))
    assert status == 200
    assert reply == {"Nodes": None, "NodeNames": ["gpu-a100-0", "gpu-a100-1"], "FailedNodes": {},
                     "FailedAndUnresolvableNodes": VLLM_FAILED, "Error": ""}


async def test_names_mode_prioritize_prefers_the_tighter_fit(make_client: ClientFactory) -> None:
    client = await make_client()
    status, reply = await post(client, "/prioritize", payload("names"))
    assert status == 200
    assert reply == [{"Host": "gpu-h100-mig-a", "Score": 0}, {"Host": "gpu-h100-mig-b", "Score": 0},
                     {"Host": "gpu-a100-0", "Score": 10}, {"Host": "gpu-a100-1", "Score": 7},
                     {"Host": "gpu-t4-shared", "Score": 0}]


async def test_lowercase_keys_and_mig_requests(make_client: ClientFactory) -> None:
    client = await make_client()
    _, filtered = await post(client, "/filter", payload("names-lowercase"))
    assert filtered["NodeNames"] == ["gpu-h100-mig-a", "gpu-h100-mig-b"]
    assert filtered["FailedAndUnresolvableNodes"]["gpu-a100-0"] == "no 1g.10gb MIG instances here (no MIG at all)"
    _, scores = await post(client, "/prioritize", payload("names-lowercase"))
    by_host = {s["Host"]: s["Score"] for s in scores}
    # mig-a already holds a 3g and a 1g: the new slice packs beside the 3g and leaves mig-b's GPU whole
    assert by_host == {"gpu-h100-mig-a": 10, "gpu-h100-mig-b": 7, "gpu-a100-0": 0, "gpu-a100-1": 0,
                       "gpu-t4-shared": 0}


@pytest.mark.parametrize(("name", "kept"), [("nodes", ["gpu-a100-0", "gpu-a100-1"]),
                                            ("nodes-lowercase", ["gpu-h100-mig-a", "gpu-h100-mig-b"])])
async def test_full_node_mode_returns_the_original_node_objects(
    make_client: ClientFactory, name: str, kept: list[str]
) -> None:
    client = await make_client()
    status, reply = await post(client, "/filter", payload(name))
    assert status == 200 and reply["NodeNames"] is None and reply["Error"] == ""
    body = json.loads(payload(name))
    sent = {n["metadata"]["name"]: n for n in body["Nodes" if name == "nodes" else "nodes"]["items"]}
    assert [n["metadata"]["name"] for n in reply["Nodes"]["items"]] == kept
    assert reply["Nodes"]["items"] == [sent[k] for k in kept]


async def test_both_modes_agree(make_client: ClientFactory) -> None:
    client = await make_client()
    for names, nodes in (("names", "nodes"), ("names-lowercase", "nodes-lowercase")):
        by_names = await post(client, "/prioritize", payload(names))
        assert by_names == await post(client, "/prioritize", payload(nodes))


async def test_full_node_mode_works_without_any_node_source(make_client: ClientFactory) -> None:
    client = await make_client(source=False)
    assert (await client.get("/readyz")).status == 200
    _, reply = await post(client, "/filter", payload("nodes-lowercase"))
    assert [n["metadata"]["name"] for n in reply["Nodes"]["items"]] == ["gpu-h100-mig-a", "gpu-h100-mig-b"]


async def test_names_mode_without_a_node_source_explains_how_to_configure_it(make_client: ClientFactory) -> None:
    client = await make_client(source=False)
    status, reply = await post(client, "/filter", payload("names"))
    assert status == 200
    assert "--cluster-state, --kubeconfig or --in-cluster" in reply["Error"]
    status, scores = await post(client, "/prioritize", payload("names"))
    assert status == 200 and {s["Score"] for s in scores} == {0}


async def test_until_the_cache_has_loaded_filter_answers_an_error_and_readyz_says_not_ready(
    make_client: ClientFactory
) -> None:
    client = await make_client(load=False)
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    _, reply = await post(client, "/filter", payload("names"))
    assert "still syncing" in reply["Error"] and reply["NodeNames"] is None


async def test_nodes_the_cache_does_not_know_are_refused_with_a_reason(make_client: ClientFactory) -> None:
    client = await make_client()
    body = json.loads(payload("names"))
    body["NodeNames"].append("gpu-new-node")
    _, reply = await post(client, "/filter", json.dumps(body).encode())
    assert "node cache" in reply["FailedAndUnresolvableNodes"]["gpu-new-node"]
    _, scores = await post(client, "/prioritize", json.dumps(body).encode())
    assert scores[-1] == {"Host": "gpu-new-node", "Score": 0}


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b'{"NodeNames": ["a"]}', b'{"Pod": "x", "NodeNames": []}'])
async def test_filter_never_answers_non_200(make_client: ClientFactory, body: bytes) -> None:
    client = await make_client()
    status, reply = await post(client, "/filter", body)
    assert status == 200
    assert reply["Error"].startswith("gpuguard: ") and reply["NodeNames"] is None


@pytest.mark.parametrize("body", [b"", b"not json", b'{"Pod": 1}'])
async def test_prioritize_refuses_a_body_it_cannot_read_with_400(make_client: ClientFactory, body: bytes) -> None:
    client = await make_client()
    status, reply = await post(client, "/prioritize", body)
    assert status == 400 and "gpuguard" in reply["error"]


async def test_bodies_over_the_limit_are_refused_in_the_protocol_channel(make_client: ClientFactory) -> None:
    client = await make_client(max_body_bytes=10_000)
    status, reply = await post(client, "/filter", payload("nodes"))
    assert status == 200 and "larger than 10000 bytes" in reply["Error"] and "nodeCacheCapable" in reply["Error"]
    status, _ = await post(client, "/prioritize", payload("nodes"))
    assert status == 413


async def test_a_32_mib_limit_admits_5000_full_nodes_worth_of_body(make_client: ClientFactory) -> None:
    client = await make_client()
    body = json.loads(payload("nodes"))
    body["Nodes"]["items"][0]["metadata"]["annotations"]["padding"] = "x" * (17 * 1024 * 1024)
    status, reply = await post(client, "/filter", json.dumps(body).encode())
    assert status == 200 and reply["Error"] == ""


async def test_internal_errors_become_an_error_or_zero_scores_and_are_logged(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "-".join(("secret", "token", "123"))

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"bug quoting the request: {secret}")  # the stack shows this line, not the value

    for name in ("decide_filter", "decide_filter_names", "decide_priorities", "decide_priorities_names"):
        monkeypatch.setattr(scheduler_ext.app, name, broken)
    client = await make_client()
    with caplog.at_level(logging.ERROR):
        _, reply = await post(client, "/filter", payload("names"))
        status, scores = await post(client, "/prioritize", payload("names"))
    assert reply["Error"] == "gpuguard extender internal error; see its log"
    assert status == 200 and [s["Score"] for s in scores] == [0] * 5
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(":")[0] for m in messages] == ["internal error in /filter",
                                                   "internal error in /prioritize; answering zero scores"]
    assert all("RuntimeError" in m and secret not in m for m in messages), messages


async def test_metrics_count_requests_outcomes_denials_and_latency(make_client: ClientFactory) -> None:
    client = await make_client()
    await post(client, "/filter", payload("names"))
    await post(client, "/filter", b"garbage")
    await post(client, "/prioritize", payload("names"))
    text = await (await client.get("/metrics")).text()
    assert 'gpuguard_extender_requests_total{outcome="ok",verb="filter"} 1.0' in text
    assert 'gpuguard_extender_requests_total{outcome="bad_request",verb="filter"} 1.0' in text
    assert 'gpuguard_extender_requests_total{outcome="ok",verb="prioritize"} 1.0' in text
    assert 'gpuguard_extender_filter_denials_total{reason="product"} 3.0' in text
    assert 'gpuguard_extender_request_duration_seconds_count{verb="filter"} 2.0' in text
    assert "gpuguard_extender_cache_nodes 6.0" in text and "gpuguard_extender_cache_gpu_pods 4.0" in text
    assert "gpuguard_extender_cache_ready 1.0" in text


async def test_a_changed_cluster_state_file_is_picked_up(make_client: ClientFactory, cluster_file: Path) -> None:
    client = await make_client()
    document = json.loads(cluster_file.read_text())
    pod = next(i for i in document["items"] if i["metadata"]["name"].startswith("pending-predictor"))
    pod["spec"]["nodeName"], pod["status"]["phase"] = "gpu-a100-1", "Running"
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "7"
    pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "7"
    cluster_file.write_text(json.dumps(document))
    for _ in range(100):
        _, reply = await post(client, "/filter", payload("names"))
        if reply["FailedNodes"]:
            break
        await asyncio.sleep(0.02)
    assert reply["FailedNodes"] == {"gpu-a100-1": "needs 2 nvidia.com/gpu, 1 of 8 free"}


async def test_a_broken_cluster_state_file_keeps_the_last_good_state(
    make_client: ClientFactory, cluster_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    with caplog.at_level(logging.ERROR):
        cluster_file.write_text("- {kind: Node\n")
        await asyncio.sleep(0.3)
    _, reply = await post(client, "/filter", payload("names"))
    assert reply["NodeNames"] == ["gpu-a100-0", "gpu-a100-1"]
    assert any("keeping the last good one" in r.message for r in caplog.records)


async def test_a_policy_change_applies_to_the_next_request(make_client: ClientFactory, policy_file: Path) -> None:
    client = await make_client()
    policy_file.write_text(policy_text(fit="spread"))
    for _ in range(100):
        _, scores = await post(client, "/prioritize", payload("names"))
        if scores[3]["Score"] == 10:
            break
        await asyncio.sleep(0.02)
    assert [s["Score"] for s in scores[2:4]] == [7, 10]  # spread: the emptier A100 now wins

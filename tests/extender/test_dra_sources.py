"""DRA objects reach the extender from `--cluster-state` and from the list/watch, and it answers over HTTP from them."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gpuguard.k8s.client import api_client
from gpuguard.k8s.watch import ClusterWatch, WatchSettings
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app
from scheduler_ext.inventory.sources import ClusterStateSource, WatchSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard
from tests.extender.conftest import DATA, policy_text
from tests.extender.fake_apiserver import FakeApiServer

DRA_CLUSTER = DATA / "dra-cluster.json"
ARGS = DATA / "args-names-dra-mig.json"
MIG_1G = "nvidia.com/mig-1g.10gb"
FAST = WatchSettings(page_size=3, watch_seconds=1, backoff=0.05, max_backoff=0.2)


def items() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(DRA_CLUSTER.read_text())["items"]
    return loaded


async def test_a_dra_cluster_state_file_drives_filter_and_prioritize_over_http(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    cluster = Path(shutil.copy(DRA_CLUSTER, tmp_path / "cluster.json"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    settings = ExtenderSettings(cluster_state=cluster, policy_path=policy, state_interval=0.05)
    registry = CollectorRegistry()
    store = InventoryStore()
    source = ClusterStateSource(cluster, store)
    app = create_app(settings, policy=PolicySource(policy, registry=registry), registry=registry, store=store,
                     board=UtilizationBoard(), background=[lambda _: source.running(settings.state_interval)])
    client = await aiohttp_client(app)
    body = ARGS.read_bytes()
    reply = await client.post("/filter", data=io.BytesIO(body), headers={"Content-Type": "application/json"})
    result = await reply.json()
    assert result["NodeNames"] == ["dra-h100-0", "dra-h100-1", "dra-a100-0", "plugin-a100-0"]
    assert result["FailedNodes"] == {} and result["FailedAndUnresolvableNodes"] == {} and result["Error"] == ""
    reply = await client.post("/prioritize", data=io.BytesIO(body), headers={"Content-Type": "application/json"})
    scores = {s["Host"]: s["Score"] for s in await reply.json()}
    assert scores["dra-h100-0"] == 10 and 0 < scores["dra-h100-1"] < 10 and scores["dra-a100-0"] == 0

    edited = json.loads(cluster.read_text())
    slices = [i for i in edited["items"] if i["kind"] == "ResourceSlice"]
    edited["items"] = [i for i in edited["items"] if i not in slices or i["spec"]["nodeName"] != "dra-h100-0"]
    cluster.write_text(json.dumps(edited))
    for _ in range(100):
        if store.state("dra-h100-0") is not None and not store.state("dra-h100-0").dra:  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.05)
    reply = await client.post("/prioritize", data=io.BytesIO(body), headers={"Content-Type": "application/json"})
    scores = {s["Host"]: s["Score"] for s in await reply.json()}
    assert scores["dra-h100-0"] == 0 and scores["dra-h100-1"] == 10  # its slice is gone: no 1g.10gb there now


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    fake.start()
    for item in items():
        fake.put(item)
    yield fake
    fake.stop()


async def test_the_dra_kinds_are_listed_then_watched_into_the_node_states(server: FakeApiServer, tmp_path: Path) -> None:
    api = api_client(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig"))
    store = InventoryStore()
    store.dra_pending = {"ResourceSlice", "ResourceClaim", "ResourceClaimTemplate"}
    source = WatchSource(lambda handler: ClusterWatch(api, handler, settings=FAST, dra=True), store)

    async def until(check: Callable[[], bool]) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("not seen in time")

    async with source.running():
        await until(lambda: store.ready)
        state = store.state("dra-h100-1")
        assert state is not None and state.dra and state.free == {MIG_1G: 6}
        claim = next(i for i in items() if i["metadata"]["name"] == "small-1-gpu-f4k8s")
        claim["status"] = {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "dra-h100-1", "device": "gpu-0-mig-19-3-1"}]}}}
        server.put(claim)
        await until(lambda: store.state("dra-h100-1").free == {MIG_1G: 5})  # type: ignore[union-attr]
        server.delete("ResourceClaim", "models/small-0-gpu-q2n7v")
        await until(lambda: store.state("dra-h100-1").free == {MIG_1G: 6})  # type: ignore[union-attr]
        assert store.claims.claims[("models", "small-1-gpu-f4k8s")]["devices"]["requests"][0]["name"] == "gpu"
        assert ("models", "gpuguard-mig-1g-10gb") in store.claims.templates


def test_until_every_dra_kind_is_listed_the_store_is_not_ready() -> None:
    store = InventoryStore()
    store.dra_pending = {"ResourceSlice", "ResourceClaim"}
    store.replace_nodes([])
    store.replace_pods([])
    store.replace_dra("ResourceSlice", [])
    assert not store.ready
    store.replace_dra("ResourceClaim", [])
    assert store.ready


def test_the_dra_watch_is_switched_on_from_the_command_line() -> None:
    import argparse

    from scheduler_ext.cli import add_extender_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_extender_arguments(parser)
    assert settings_from_args(parser.parse_args(["--in-cluster", "--watch-dra"])).watch_dra
    assert not settings_from_args(parser.parse_args(["--in-cluster"])).watch_dra

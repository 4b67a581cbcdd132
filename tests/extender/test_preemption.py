"""What kube-scheduler's preemption may do with the extender's refusals, read off the filter reply on the wire.

kube-scheduler treats a node in `FailedNodes` as one where evicting lower-priority pods might help, and records the
nodes in `FailedAndUnresolvableNodes` as UnschedulableAndUnresolvable, which its DefaultPreemption skips
(kubernetes/kubernetes pkg/scheduler/schedule_one.go, `findNodesThatPassExtenders`). So only a node short of
free GPUs may be listed as failed: evicting pods frees GPUs, and the in-tree NodeResourcesFit sees the same GPU
resources, so its dry run models it. A node whose GPUs are too busy, of the wrong product, without the resource, or
not yet in the extender's cache is unresolvable: no eviction changes the utilization samples (they lag, and the load
need not be a pod's), the product, the node's resources, or what the cache knows.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from gpuguard.contracts.node_inventory import ANNOTATION
from gpuguard.web.policy_source import PolicySource
from scheduler_ext.app import create_app
from scheduler_ext.inventory.sources import ClusterStateSource
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.settings import ExtenderSettings
from scheduler_ext.utilization import UtilizationBoard, snapshot
from tests.extender.conftest import CLUSTER, INVENTORY_TIME, cluster_node, payload, policy_text

NOW = INVENTORY_TIME + 30


def busy(node: str, percent: str) -> dict[str, Any]:
    """Prometheus' answers with every GPU of `node` at `percent`, sampled just now."""
    uuids = [gpu["uuid"] for gpu in json.loads(cluster_node(node)["metadata"]["annotations"][ANNOTATION])["gpus"]]
    labels = [{"Hostname": node, "UUID": uuid, "gpu": str(i)} for i, uuid in enumerate(uuids)]
    return {"util": [{"metric": m, "value": [NOW, percent]} for m in labels],
            "util_at": [{"metric": m, "value": [NOW, str(NOW)]} for m in labels]}


async def filter_reply(aiohttp_client: Callable[[web.Application], Awaitable[TestClient[Any, Any]]],
                       tmp_path: Path, body: bytes) -> Any:
    cluster = Path(shutil.copy(CLUSTER, tmp_path / "cluster.json"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    settings = ExtenderSettings(cluster_state=cluster, policy_path=policy, state_interval=0.05)
    registry, store, board = CollectorRegistry(), InventoryStore(pods_known=True), UtilizationBoard()
    board.nodes = snapshot(busy("gpu-a100-1", "99"))
    source = ClusterStateSource(cluster, store)
    app = create_app(settings, policy=PolicySource(policy, registry=registry), registry=registry, store=store,
                     board=board, background=[lambda _: source.running(settings.state_interval)],
                     clock=lambda: NOW)
    client = await aiohttp_client(app)
    while not store.ready:
        await asyncio.sleep(0.01)
    reply = await client.post("/filter", data=io.BytesIO(body), headers={"Content-Type": "application/json"})
    assert reply.status == 200
    return await reply.json()


async def test_only_a_node_short_of_free_gpus_is_left_to_preemption(aiohttp_client: Any, tmp_path: Path) -> None:
    body = json.loads(payload("names"))  # kube-scheduler's ExtenderArgs, nodeCacheCapable: true
    for section in ("limits", "requests"):
        body["Pod"]["spec"]["containers"][0]["resources"][section]["nvidia.com/gpu"] = "6"
    body["NodeNames"].append("gpu-new-node")
    reply = await filter_reply(aiohttp_client, tmp_path, json.dumps(body).encode())
    assert set(reply) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert reply["NodeNames"] == [] and reply["Error"] == ""
    assert reply["FailedNodes"] == {"gpu-a100-0": "needs 6 nvidia.com/gpu, 4 of 8 free"}
    unresolvable = reply["FailedAndUnresolvableNodes"]
    assert set(unresolvable) == {"gpu-h100-mig-a", "gpu-h100-mig-b", "gpu-t4-shared", "gpu-a100-1", "gpu-new-node"}
    assert "99%" in unresolvable["gpu-a100-1"], "too busy: evicting pods does not lower the samples"
    assert "node cache" in unresolvable["gpu-new-node"]

"""`NodeApi` behaves the same on the API server (the official client, over HTTP) and on a cluster-state file."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuguard.k8s.cluster_state import ClusterStateFile
from gpuguard.k8s.nodes import ClusterStateNodes, Conflict, KubernetesNodes, NodeApi, NodeApiError, NotFound

from .apiserver import FakeApiServer

NODE = {"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "Tesla-T4", "old": "x"},
                     "annotations": {"keep": "me"}}}
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "plugin-config", "namespace": "gpu-operator"}, "data": {"default": "version: v1\n"}}


@dataclass
class Cluster:
    api: NodeApi
    node: Callable[[str], dict[str, Any]]
    config_map: Callable[[str, str], dict[str, Any] | None]


@pytest.fixture(params=["api-server", "cluster-state"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "api-server":
        with FakeApiServer([NODE]) as server:
            api = KubernetesNodes.connect(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig"))
            yield Cluster(api, lambda n: server.nodes[n], lambda ns, n: server.config_maps.get((ns, n)))
    else:
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump([NODE]))
        state = ClusterStateFile(path)
        yield Cluster(ClusterStateNodes(state), lambda n: state.load().nodes[n],
                      lambda ns, n: state.load().config_maps.get((ns, n)))


def test_a_node_is_read_as_plain_json(cluster: Cluster) -> None:
    node = cluster.api.read_node("gpu-1")
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "Tesla-T4"


def test_a_missing_node_is_not_found(cluster: Cluster) -> None:
    with pytest.raises(NotFound, match="read node nope"):
        cluster.api.read_node("nope")


def test_patching_sets_and_removes_only_the_given_keys(cluster: Cluster) -> None:
    cluster.api.patch_node_metadata("gpu-1", labels={"old": None, "new": "1"}, annotations={"gpuguard.io/x": "{}"})
    metadata = cluster.node("gpu-1")["metadata"]
    assert metadata["labels"] == {"nvidia.com/gpu.product": "Tesla-T4", "new": "1"}
    assert metadata["annotations"] == {"keep": "me", "gpuguard.io/x": "{}"}


def test_a_config_map_is_created_once_then_replaced_only_from_its_latest_version(cluster: Cluster) -> None:
    assert cluster.api.read_config_map("gpu-operator", "plugin-config") is None
    cluster.api.create_config_map(CONFIG_MAP)
    with pytest.raises(Conflict):
        cluster.api.create_config_map(CONFIG_MAP)
    first = cluster.api.read_config_map("gpu-operator", "plugin-config")
    assert first is not None and first["data"] == CONFIG_MAP["data"]
    cluster.api.replace_config_map({**first, "data": {**first["data"], "a": "1"}})
    with pytest.raises(Conflict):  # `first` is stale now: someone (we) changed the object since it was read
        cluster.api.replace_config_map({**first, "data": {**first["data"], "b": "2"}})
    stored = cluster.config_map("gpu-operator", "plugin-config")
    assert stored is not None and stored["data"] == {"default": "version: v1\n", "a": "1"}


def test_concurrent_writers_never_lose_an_update(cluster: Cluster) -> None:
    """What several agents do at once: read, add an entry, replace; on Conflict read again."""
    cluster.api.create_config_map(CONFIG_MAP)

    def add(key: str) -> None:
        while True:
            current = cluster.api.read_config_map("gpu-operator", "plugin-config")
            assert current is not None
            try:
                cluster.api.replace_config_map({**current, "data": {**current["data"], key: key}})
                return
            except Conflict:
                continue

    writers = [threading.Thread(target=add, args=(f"entry-{i}",)) for i in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    stored = cluster.config_map("gpu-operator", "plugin-config")
    assert stored is not None and set(stored["data"]) == {"default"} | {f"entry-{i}" for i in range(6)}


def test_api_server_requests_are_authenticated_merge_patches(tmp_path: Path) -> None:
    with FakeApiServer([NODE]) as server:
        api = KubernetesNodes.connect(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig", token="s3cret"))
        api.patch_node_metadata("gpu-1", labels={"old": None})
        [patch] = server.writes()
    assert (patch.method, patch.path, patch.content_type) == ("PATCH", "/api/v1/nodes/gpu-1",
                                                              "application/merge-patch+json")
    assert patch.body == {"metadata": {"labels": {"old": None}}}
    assert patch.authorization == "Bearer s3cret"


@pytest.mark.parametrize(("status", "kind"), [(500, NodeApiError), (503, NodeApiError), (404, NotFound)])
def test_api_server_errors_name_the_operation_and_status(tmp_path: Path, status: int, kind: type) -> None:
    with FakeApiServer([NODE]) as server:
        api = KubernetesNodes.connect(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig"))
        server.fail_next = [status]
        with pytest.raises(kind) as failure:
            api.read_node("gpu-1")
    assert failure.value.status == status
    assert str(failure.value).startswith(f"read node gpu-1: HTTP {status}")


def test_an_unreachable_api_server_is_an_api_error_without_status(tmp_path: Path) -> None:
    with FakeApiServer([NODE]) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    api = KubernetesNodes.connect(kubeconfig=kubeconfig)
    with pytest.raises(NodeApiError, match="unreachable") as failure:
        api.read_node("gpu-1")
    assert failure.value.status is None

"""The kubelet PodResources client against a real gRPC server on a unix socket, and its generated code."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.attribution import Allocation
from node_agent.podresources import PodResourcesClient

from .conftest import ROOT, load_agent_data
from .kubelet import FakeKubelet

LIST = load_agent_data("podresources-h100-mig.json")
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "kubelet.sock"  # tmp_path is short enough for a unix socket's 107-byte limit


@pytest.fixture
def kubelet(socket_path: Path) -> Iterator[FakeKubelet]:
    with FakeKubelet(socket_path, LIST) as server:
        yield server


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "node_agent.podresources" and r.levelno >= 30]


def test_the_generated_client_matches_the_proto(tmp_path: Path) -> None:
    source = Path("node_agent/podresources_v1/api.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(source)],
                   cwd=ROOT, check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / source.parent / name).read_text()
        assert fresh == (ROOT / source.parent / name).read_text(), f"{name} is stale: regenerate (see api.proto)"


def test_every_device_id_of_every_container_is_listed(kubelet: FakeKubelet, socket_path: Path) -> None:
    found = PodResourcesClient(socket_path).allocations()
    assert found[:2] == (
        Allocation("llama-predictor-00001-deployment-6d8f9c7b5-x2k4q", "team-nlp", "kserve-container",
                   "nvidia.com/mig-3g.40gb", "MIG-3e0c6b5d-8f7a-5b9c-1d2e-4f5a6b7c8d94"),
        Allocation("bert-predictor-00003-deployment-7c9d8e6f4-m7n2p", "team-search", "kserve-container",
                   "nvidia.com/mig-1g.10gb", "MIG-4f1d7c6e-9a8b-5c0d-2e3f-5a6b7c8d9ea5"),
    )
    assert {a.resource for a in found} == {"nvidia.com/mig-3g.40gb", "nvidia.com/mig-1g.10gb", "nvidia.com/gpu",
                                           "intel.com/sriov_netdevice"}
    assert len(found) == 4  # containers without devices contribute nothing


def test_one_answer_serves_every_scrape_within_max_age(kubelet: FakeKubelet, socket_path: Path) -> None:
    now = [100.0]
    client = PodResourcesClient(socket_path, max_age=5, clock=lambda: now[0])
    client.allocations()
    now[0] += 4.9
    client.allocations()
    assert kubelet.calls == 1
    now[0] += 0.1
    client.allocations()
    assert kubelet.calls == 2


def test_without_the_socket_it_says_so_once_and_picks_the_socket_up_when_it_appears(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = PodResourcesClient(socket_path, max_age=0)
    assert client.allocations() == client.allocations() == ()
    [warning] = warnings_of(caplog)
    assert str(socket_path) in warning and "without pod" in warning
    with FakeKubelet(socket_path, LIST):
        assert len(client.allocations()) == 4
    assert any("pod attribution from" in r.getMessage() for r in caplog.records)


def test_a_hanging_kubelet_costs_at_most_the_timeout_and_is_logged_once(
    kubelet: FakeKubelet, socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet.behaviour, kubelet.hang_seconds = "hang", 2.0
    client = PodResourcesClient(socket_path, timeout=0.3, max_age=0)
    started = time.monotonic()
    assert client.allocations() == ()
    assert time.monotonic() - started < 1.5
    assert client.allocations() == ()
    [warning] = warnings_of(caplog)
    assert "DEADLINE_EXCEEDED" in warning


@pytest.mark.parametrize(("behaviour", "status"), [("garbage", "INTERNAL"), ("fail", "UNAVAILABLE")])
def test_a_broken_answer_leaves_the_labels_out(
    socket_path: Path, caplog: pytest.LogCaptureFixture, behaviour: str, status: str
) -> None:
    server = FakeKubelet(socket_path, LIST)
    server.behaviour = behaviour
    with server:
        assert PodResourcesClient(socket_path, max_age=0).allocations() == ()
    [warning] = warnings_of(caplog)
    assert status in warning


def test_a_restarted_kubelet_is_dialled_afresh(socket_path: Path) -> None:
    client = PodResourcesClient(socket_path, max_age=0)
    with FakeKubelet(socket_path, LIST):
        assert len(client.allocations()) == 4
    assert client.allocations() == ()  # the old socket is gone
    with FakeKubelet(socket_path, {"podResources": [LIST["podResources"][2]]}):
        assert [a.pod for a in client.allocations()] == ["vllm-predictor-00001-deployment-5b7c6d8e9-q4r8s"]
    client.close()


def test_started_it_asks_on_its_own_thread_and_a_scrape_never_waits_for_the_kubelet(
    kubelet: FakeKubelet, socket_path: Path
) -> None:
    client = PodResourcesClient(socket_path, max_age=0.2, timeout=2)
    client.start()
    try:
        assert len(client.allocations()) == 4  # asked once before start() returned
        kubelet.behaviour, kubelet.hang_seconds = "hang", 1.5
        time.sleep(0.3)  # the refresher is now stuck in a slow List
        started = time.monotonic()
        assert len(client.allocations()) == 4  # the last answer, at once
        assert time.monotonic() - started < 0.1
        calls = kubelet.calls
        kubelet.behaviour = "answer"
        deadline = time.monotonic() + 5
        while kubelet.calls < calls + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kubelet.calls >= calls + 2  # it keeps asking every max_age
    finally:
        client.close()

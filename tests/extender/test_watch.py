"""The Node and Pod watch through the real kubernetes client, against a stand-in API server over HTTP."""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuguard.k8s.client import api_client
from gpuguard.k8s.watch import ClusterWatch, EventType, JsonDict, Kind, KindWatcher, WatchSettings
from tests.extender.conftest import cluster_items, payload
from tests.extender.fake_apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
FAST = WatchSettings(page_size=2, watch_seconds=1, backoff=0.05, max_backoff=0.2)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    def synced(self, kind: Kind, objects: list[JsonDict]) -> None:
        with self.lock:
            self.events.append(("synced", kind, sorted(o["metadata"]["name"] for o in objects)))

    def changed(self, kind: Kind, event: EventType, obj: JsonDict) -> None:
        with self.lock:
            self.events.append((event, kind, obj["metadata"]["name"]))

    def wait_for(self, check: Callable[[list[tuple[str, str, Any]]], bool], timeout: float = 10) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if check(list(self.events)):
                    return
            time.sleep(0.02)
        raise AssertionError(f"not seen in time; events: {self.events}")


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()
    fake.start()
    for item in cluster_items():
        fake.put(item)
    yield fake
    fake.stop()


def node(name: str) -> JsonDict:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}}


def watcher(server: FakeApiServer, tmp_path: Path, kind: Kind, recorder: Recorder) -> KindWatcher:
    api = api_client(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig"))
    return KindWatcher(api, kind, recorder, settings=FAST)


def test_lists_in_pages_then_streams_changes(server: FakeApiServer, tmp_path: Path) -> None:
    recorder = Recorder()
    watch = watcher(server, tmp_path, "Node", recorder)
    watch.start()
    try:
        recorder.wait_for(lambda e: any(x[0] == "synced" for x in e))
        server.put(node("gpu-new"))
        server.delete("Node", "cpu-0")
        recorder.wait_for(lambda e: ("DELETED", "Node", "cpu-0") in e)
    finally:
        watch.stop()
    assert recorder.events[0] == ("synced", "Node", sorted(
        ["cpu-0", "gpu-a100-0", "gpu-a100-1", "gpu-h100-mig-a", "gpu-h100-mig-b", "gpu-t4-shared"]))
    assert recorder.events[1:3] == [("ADDED", "Node", "gpu-new"), ("DELETED", "Node", "cpu-0")]
    assert server.lists >= 3  # 6 nodes in pages of 2


def test_only_bound_pods_are_watched(server: FakeApiServer, tmp_path: Path) -> None:
    recorder = Recorder()
    watch = watcher(server, tmp_path, "Pod", recorder)
    watch.start()
    try:
        recorder.wait_for(lambda e: bool(e))
    finally:
        watch.stop()
    names = recorder.events[0][2]
    assert "pending-predictor-5f6d7c8b9a-zzzzz" not in names and len(names) == 5


def test_an_expired_resource_version_relists(server: FakeApiServer, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    watch = watcher(server, tmp_path, "Node", recorder)
    with caplog.at_level(logging.INFO):
        watch.start()
        try:
            recorder.wait_for(lambda e: any(x[0] == "synced" for x in e))
            server.expire_history()
            server.put(node("added-while-expired"))
            server.expire_history()
            recorder.wait_for(lambda e: sum(x[0] == "synced" for x in e) >= 2, timeout=15)
        finally:
            watch.stop()
    last_sync = [x for x in recorder.events if x[0] == "synced"][-1]
    assert "added-while-expired" in last_sync[2]
    assert any("expired; re-listing" in r.message for r in caplog.records)


def test_an_unreachable_api_server_is_retried_and_stopping_is_prompt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}],
    }))
    recorder = Recorder()
    watch = KindWatcher(api_client(kubeconfig=kubeconfig), "Node", recorder, settings=FAST)
    with caplog.at_level(logging.WARNING):
        watch.start()
        time.sleep(0.5)
        started = time.time()
        watch.stop()
    assert time.time() - started < 2
    assert recorder.events == []
    assert len([r for r in caplog.records if "list/watch failed" in r.message]) >= 2


def test_cluster_watch_runs_nodes_and_pods(server: FakeApiServer, tmp_path: Path) -> None:
    recorder = Recorder()
    api = api_client(kubeconfig=server.write_kubeconfig(tmp_path / "kubeconfig"))
    watch = ClusterWatch(api, recorder, settings=FAST)
    watch.start()
    try:
        recorder.wait_for(lambda e: {x[1] for x in e if x[0] == "synced"} == {"Node", "Pod"})
    finally:
        watch.stop()


# --------------------------------------------------------------------------- the extender process, end to end


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(port: int, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_the_extender_follows_binds_and_deletions_through_the_watch(server: FakeApiServer, tmp_path: Path) -> None:
    port = free_port()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler_ext", "--host", "127.0.0.1", "--port", str(port),
         "--kubeconfig", str(kubeconfig)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http(port, "/readyz")[0] == 200)
        assert http(port, "/filter", payload("names"))[1]["NodeNames"] == ["gpu-a100-0", "gpu-a100-1"]
        pod = copy.deepcopy(next(i for i in cluster_items() if i["metadata"]["name"].startswith("llama-a")))
        pod["metadata"]["name"], pod["spec"]["nodeName"] = "big-one", "gpu-a100-1"
        for section in ("limits", "requests"):
            pod["spec"]["containers"][0]["resources"][section]["nvidia.com/gpu"] = "8"
        server.put(pod)
        wait_until(lambda: "gpu-a100-1" in http(port, "/filter", payload("names"))[1]["FailedNodes"])
        server.delete("Pod", "llm-prod/big-one")  # a deleted predictor frees its GPUs at once (HAMi#2923)
        wait_until(lambda: http(port, "/filter", payload("names"))[1]["NodeNames"] == ["gpu-a100-0", "gpu-a100-1"])
    finally:
        process.terminate()
        assert process.wait(10) == 0

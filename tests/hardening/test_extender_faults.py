"""Prometheus down, hanging past the refresh timeout, or answering garbage: the extender, as a process, still answers
filter and prioritize at once, with the scores it gives when Prometheus has no samples at all (neutral utilization).

The Prometheus here is a small HTTP server in this process that answers /api/v1/query as told; the extender is
`gpuguard extender --cluster-state ... --prometheus-url ...`, refreshing every 0.2 s. A control run with a busy GPU
node shows that the same requests do see utilization when Prometheus answers.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scheduler_ext.utilization import ENGINE_ACTIVE
from tests.extender.conftest import CLUSTER, payload, policy_text
from tests.extender.test_cli import Extender, extender_factory, free_port, get

__all__ = ["extender_factory"]  # the fixture, used by name below

A100_0_GPUS = [f"GPU-nvidia-a-0{i}-7f3e9c1a-55aa-4b0e-9d2c" for i in range(8)]
HANG_SECONDS = 30.0
"""Longer than the extender's 10-second refresh timeout."""


class FakePrometheus(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = "empty"
        self.calls = 0
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakePrometheus

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.calls += 1
        behaviour = self.server.behaviour
        if behaviour == "hang":
            self.server.release.wait(HANG_SECONDS)
        if behaviour == "garbage":
            self._send(200, b"<html>upstream connect error</html>", "text/html")
            return
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
        result = [] if behaviour != "busy" or ENGINE_ACTIVE in query else [
            {"metric": {"Hostname": "gpu-a100-0", "UUID": uuid},
             "value": [time.time(), str(time.time()) if "timestamp(" in query else "100"]}
            for uuid in A100_0_GPUS
        ]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
        self._send(200, body.encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text())
    return path


def start(factory: type[Extender], url: str, policy: Path) -> Extender:
    return factory("--cluster-state", str(CLUSTER), "--policy", str(policy), "--prometheus-url", url,
                   "--prometheus-interval", "0.2")


def refreshes(extender: Extender, result: str) -> float:
    _, body = get(extender.port, "/metrics")
    found = re.search(rf'^gpuguard_extender_utilization_refreshes_total{{result="{result}"}} (\S+)$',
                      body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def decisions(extender: Extender) -> tuple[list[str], dict[str, int]]:
    """The kept nodes and the scores for the canonical vLLM pod (two whole A100s), each within urllib's 5 s."""
    status, filtered = get(extender.port, "/filter", payload("names"))
    assert status == 200
    status, scored = get(extender.port, "/prioritize", payload("names"))
    assert status == 200
    return json.loads(filtered)["NodeNames"], {s["Host"]: s["Score"] for s in json.loads(scored)}


def neutral(factory: type[Extender], prometheus: FakePrometheus, policy: Path) -> tuple[list[str], dict[str, int]]:
    """What the extender answers when Prometheus answers, but with no samples."""
    prometheus.behaviour = "empty"
    extender = start(factory, prometheus.url, policy)
    wait_for(lambda: refreshes(extender, "success") >= 1, "a successful refresh")
    answer = decisions(extender)
    assert extender.stop() == 0
    return answer


def test_a_busy_gpu_node_reported_by_prometheus_changes_the_decisions(
    extender_factory: type[Extender], prometheus: FakePrometheus, policy_file: Path
) -> None:
    baseline = neutral(extender_factory, prometheus, policy_file)
    assert baseline[0] == ["gpu-a100-0", "gpu-a100-1"]
    prometheus.behaviour = "busy"
    extender = start(extender_factory, prometheus.url, policy_file)
    wait_for(lambda: refreshes(extender, "success") >= 1, "a successful refresh")
    kept, _ = decisions(extender)
    assert kept == ["gpu-a100-1"], "a node whose GPUs are all 100 % busy is filtered out"


@pytest.mark.parametrize("fault", ["down", "hang", "garbage"])
def test_a_failing_prometheus_leaves_decisions_prompt_and_neutral(
    extender_factory: type[Extender], prometheus: FakePrometheus, policy_file: Path, fault: str
) -> None:
    baseline = neutral(extender_factory, prometheus, policy_file)
    prometheus.behaviour = fault
    url = f"http://127.0.0.1:{free_port()}" if fault == "down" else prometheus.url
    calls_before = prometheus.calls
    extender = start(extender_factory, url, policy_file)
    if fault == "hang":
        wait_for(lambda: prometheus.calls > calls_before, "the extender to ask the hanging Prometheus")
    else:
        wait_for(lambda: refreshes(extender, "error") >= 2, "two failed refreshes")
    assert decisions(extender) == baseline
    if fault == "hang":
        assert refreshes(extender, "success") == 0 and refreshes(extender, "error") == 0, "still waiting on it"
    assert extender.stop() == 0

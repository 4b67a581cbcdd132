"""`gpuguard extender` as a process: the binding command line, metrics placement, bad input, clean exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuguard.cli import build_parser
from tests.extender.conftest import CLUSTER, payload, policy_text

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body),
                                    timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuguard", "extender", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


class Extender:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpuguard", "extender", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("extender did not become ready")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(10)


@pytest.fixture
def extender_factory() -> Iterator[type[Extender]]:
    started: list[Extender] = []

    class Tracked(Extender):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for extender in started:
        if extender.process.poll() is None:
            extender.process.kill()
            extender.process.wait(10)


def test_the_command_line_has_the_documented_flags_and_defaults() -> None:
    args = build_parser().parse_args(["extender"])
    assert (args.port, args.host, args.metrics_port, args.cluster_state, args.kubeconfig, args.in_cluster) == (
        8888, "0.0.0.0", None, None, None, False)
    help_text = run("--help").stdout
    for flag in ("--host", "--port", "--policy", "--prometheus-url", "--cluster-state", "--kubeconfig",
                 "--in-cluster", "--metrics-port"):
        assert flag in help_text


def test_serves_filter_and_metrics_on_the_main_port_and_exits_cleanly(extender_factory: type[Extender]) -> None:
    extender = extender_factory("--cluster-state", str(CLUSTER))
    status, body = get(extender.port, "/filter", payload("names"))
    assert status == 200 and json.loads(body)["NodeNames"] == ["gpu-a100-0", "gpu-a100-1"]
    status, body = get(extender.port, "/metrics")
    assert status == 200 and b"gpuguard_extender_requests_total" in body
    assert extender.stop() == 0


def test_a_separate_metrics_port_moves_metrics_off_the_main_port(extender_factory: type[Extender]) -> None:
    metrics_port = free_port()
    extender = extender_factory("--cluster-state", str(CLUSTER), "--metrics-port", str(metrics_port))
    assert get(extender.port, "/metrics")[0] == 404
    status, body = get(metrics_port, "/metrics")
    assert status == 200 and b"gpuguard_extender_cache_nodes 6.0" in body
    assert extender.stop() == 0


def test_metrics_port_zero_turns_metrics_off(extender_factory: type[Extender]) -> None:
    extender = extender_factory("--metrics-port", "0")
    assert get(extender.port, "/metrics")[0] == 404
    assert get(extender.port, "/healthz")[0] == 200


def test_python_m_scheduler_ext_is_the_same_command() -> None:
    result = subprocess.run([sys.executable, "-m", "scheduler_ext", "--help"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--prometheus-url" in result.stdout


def test_an_invalid_policy_stops_startup_with_the_wrong_field(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(fit="pack-tight"))
    result = run("--policy", str(policy))
    assert result.returncode == 2
    assert "scheduling.fit" in result.stderr


def test_a_missing_cluster_state_file_stops_startup(tmp_path: Path) -> None:
    result = run("--cluster-state", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "nope.json does not exist" in result.stderr


def test_only_one_node_source_may_be_given(tmp_path: Path) -> None:
    result = run("--cluster-state", str(CLUSTER), "--kubeconfig", str(tmp_path / "kc"))
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_an_unusable_kubeconfig_stops_startup(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    result = run("--kubeconfig", str(kubeconfig))
    assert result.returncode == 2 and "cannot load the kubeconfig" in result.stderr

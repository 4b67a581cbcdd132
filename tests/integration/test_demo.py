"""The demo's flow as a test: the webhook, the extender and five node agents as real processes, talking real TLS and
HTTP, with a cluster-state file for an API server and, in one variant, a real Prometheus between agents and extender.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from gpuguard.demo.flow import Trip
from gpuguard.demo.run import DemoResult, DemoSettings, run_demo
from gpuguard.k8s.cluster_state import ClusterStateFile
from tests.conftest import ROOT


def by_name(result: DemoResult) -> dict[str, Trip]:
    return {trip.name: trip for trip in result.trips}


@pytest.fixture(scope="module", params=[False, True], ids=["annotations", "prometheus"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    use_prometheus: bool = request.param
    if use_prometheus:
        assert shutil.which("prometheus"), "the Prometheus server (Debian package prometheus) must be installed"
    workdir = tmp_path_factory.mktemp("demo-prometheus" if use_prometheus else "demo-annotations")
    return asyncio.run(run_demo(DemoSettings(workdir=workdir, prometheus=use_prometheus), say=lambda _: None))


def test_every_process_exits_cleanly(demo: DemoResult) -> None:
    assert demo.exit_codes and demo.clean_exit, demo.exit_codes


def test_utilization_came_from_the_source_asked_for(demo: DemoResult, request: pytest.FixtureRequest) -> None:
    assert demo.used_prometheus is ("prometheus" in request.node.callspec.id)


def test_the_busy_node_loses_to_the_idle_one(demo: DemoResult) -> None:
    trips = by_name(demo)
    assert trips["triton-resnet50"].node == "h100-mig-b"
    assert trips["triton-resnet50"].scores["h100-mig-b"] > trips["triton-resnet50"].scores["h100-mig-a"]
    assert trips["mixtral-8x7b"].node == "a100-b"
    assert trips["mixtral-8x7b"].scores["a100-b"] > trips["mixtral-8x7b"].scores["a100-a"]


def test_each_pod_lands_where_policy_and_fit_send_it(demo: DemoResult) -> None:
    trips = by_name(demo)
    assert trips["llama3-8b"].node == "h100-mig-b", "the llm rule pins H100; the last whole GPU there fits best"
    assert trips["llama3-8b"].rule == "llm"
    assert {trips["distilbert-sst2"].node, trips["yolo-detect"].node} <= {"h100-mig-a", "h100-mig-b"}
    assert trips["distilbert-sst2"].node == trips["yolo-detect"].node, "MIG slices pack onto one node"
    assert "nvidia.com/mig-1g.10gb: 1" in trips["distilbert-sst2"].changes
    assert trips["distilbert-sst2"].rule == "small-models-on-mig"
    assert "node affinity nvidia.com/gpu.sharing-strategy NotIn time-slicing,mps" in trips["triton-resnet50"].changes
    assert trips["bert-dev"].node == "t4-shared"
    assert "nodeSelector nvidia.com/gpu.sharing-strategy=time-slicing" in trips["bert-dev"].changes


def test_the_bad_request_is_denied_with_its_fix(demo: DemoResult) -> None:
    trip = by_name(demo)["tiny-bert"]
    assert trip.node == ""
    assert "'0.5' is not a whole number" in trip.denied
    assert "Fix:" in trip.denied


def test_a_cpu_only_server_gets_no_gpu_and_lands_on_a_cpu_node(demo: DemoResult) -> None:
    trip = by_name(demo)["sklearn-iris"]
    assert trip.rule == "cpu-only-servers"
    assert trip.changes == []
    assert trip.node == "cpu-1"


def test_nodes_without_the_resource_are_refused_with_a_reason(demo: DemoResult) -> None:
    refused = by_name(demo)["distilbert-sst2"].refused
    assert set(refused) == {"a100-a", "a100-b", "t4-shared"}
    assert all("1g.10gb" in reason for reason in refused.values())


def test_bound_pods_and_the_time_slicing_config_are_in_the_cluster_state(demo: DemoResult) -> None:
    assert demo.workdir is not None
    objects = ClusterStateFile(demo.workdir / "cluster-state.yaml").load()
    placed = {pod["metadata"]["labels"]["serving.kserve.io/inferenceservice"]: pod["spec"]["nodeName"]
              for pod in objects.pods}
    assert placed == {trip.name: trip.node for trip in demo.trips if trip.node}
    assert demo.time_slicing.startswith("t4-shared: nvidia.com/device-plugin.config=gpuguard-ts4-")
    assert any(name == "gpuguard-time-slicing" for _, name in objects.config_maps)


def test_gpuguard_demo_runs_as_a_command_and_points_to_the_helm_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuguard", "demo", "--no-prometheus", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DENIED" in result.stdout
    assert "processes stopped cleanly" in result.stdout
    assert "helm install gpuguard charts/gpuguard" in result.stdout
    assert "\x1b[" not in result.stdout, "piped output is plain"
    assert max(len(line) for line in result.stdout.splitlines()) <= 110


def _in_a_terminal(args: list[str], *, columns: int, env: dict[str, str]) -> str:
    """Run a command with a real pseudo-terminal `columns` wide as its stdout, and return what it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=30) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_on_a_terminal_the_demo_uses_its_width_and_colour(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    output = _in_a_terminal([sys.executable, "-m", "gpuguard", "demo", "--no-prometheus", "--workdir", str(tmp_path)],
                            columns=160, env={**env, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color"})
    assert "\x1b[1;31mDENIED" in output, "a refusal is red"
    assert "\x1b[32mscheduled" in output
    widths = [len(ANSI.sub("", line)) for line in output.splitlines()]
    assert max(widths) <= 160
    assert "-" * 160 in output, "the table rule spans the terminal"
    assert any(110 < width for width in widths), "text wraps at the terminal's width, not at a fixed one"

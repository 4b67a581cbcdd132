"""A real Prometheus server scrapes a running agent, and the extender's kind of query finds the node's GPUs.

The agent serves `examples/fake-gpus/h100-mig.yaml` (H100s with GPM, two of them in MIG mode) while a stand-in kubelet
answers PodResources `List` on a unix socket, so Prometheus sees what it would on a Hopper MIG node without DCGM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuguard.contracts.node_inventory import ANNOTATION
from gpuguard.policy.gpustate import gpu_request
from gpuguard.policy.scoring import read_utilization
from scheduler_ext.inventory.nodes import node_facts
from scheduler_ext.utilization import queries, snapshot, vector

from .conftest import ROOT, agent_env, free_port, load_agent_data
from .kubelet import FakeKubelet

FAKE_GPUS = ROOT / "examples" / "fake-gpus" / "h100-mig.yaml"

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus_url(tmp_path: Path) -> Iterator[str]:
    assert Path(PROMETHEUS).exists(), "the prometheus server is needed (apt-get install prometheus)"
    agent_port, port = free_port(), free_port()
    kubelet = FakeKubelet(tmp_path / "kubelet.sock", load_agent_data("podresources-h100-mig.json")).start()
    agent = subprocess.Popen(
        [sys.executable, "-m", "gpuguard", "agent", "--node-name", "h100-node", "--fake-gpus", str(FAKE_GPUS),
         "--host", "127.0.0.1", "--metrics-port", str(agent_port), "--pod-resources-socket", str(kubelet.socket)],
        cwd=ROOT, env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gpuguard-agent", "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]}],
    }))
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for process in (server, agent):
            process.terminate()
            process.wait(timeout=10)
        kubelet.stop()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        result: list[dict[str, Any]] = json.load(r)["data"]["result"]
        return result


def first_result(url: str, promql: str, *, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = query(url, promql)
            if result:
                return result
        except OSError:
            pass  # not listening yet
        time.sleep(0.25)
    raise AssertionError(f"no result for {promql} within {timeout} s")


def test_prometheus_scrapes_dcgm_compatible_series_by_node(prometheus_url: str) -> None:
    util = first_result(prometheus_url, "DCGM_FI_DEV_GPU_UTIL")
    assert sorted((s["metric"]["gpu"], s["metric"]["Hostname"], s["value"][1]) for s in util) == [
        ("2", "h100-node", "72"), ("3", "h100-node", "3")]  # GPUs 0 and 1 are in MIG mode: no utilization
    # The extender's query shape: either spelling of the hostname label, grouped by node.
    by_node = query(prometheus_url, 'max by (node) (label_join(DCGM_FI_DEV_GPU_UTIL, "node", "", "Hostname", '
                                    '"hostname"))')
    assert [(s["metric"]["node"], s["value"][1]) for s in by_node] == [("h100-node", "72")]
    mig = query(prometheus_url, 'DCGM_FI_DEV_FB_USED{GPU_I_PROFILE="3g.40gb"}')
    assert [(s["metric"]["gpu"], s["metric"]["GPU_I_ID"], s["value"][1]) for s in mig] == [("0", "2", "2048")]


def test_prometheus_sees_per_instance_activity_and_the_pods_holding_each_device(prometheus_url: str) -> None:
    engine = first_result(prometheus_url, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    by_device = {(s["metric"]["gpu"], s["metric"].get("GPU_I_ID")): s for s in engine}
    assert len(by_device) == 4 + 7 + 2  # every MIG instance of GPUs 0 and 1, and the two whole GPUs
    llama = by_device[("0", "2")]["metric"]
    assert (llama["GPU_I_PROFILE"], llama["pod"], llama["namespace"], llama["container"]) == (
        "3g.40gb", "llama-predictor-00001-deployment-6d8f9c7b5-x2k4q", "team-nlp", "kserve-container")
    assert by_device[("0", "2")]["value"][1] == "0.88"
    assert llama["pci_bus_id"] == "00000000:19:00.0"
    assert by_device[("1", "7")]["metric"]["pod"] == "bert-predictor-00003-deployment-7c9d8e6f4-m7n2p"
    assert "pod" not in by_device[("1", "8")]["metric"]  # nobody holds it
    whole = query(prometheus_url, 'DCGM_FI_DEV_GPU_UTIL{namespace="team-nlp"}')
    assert [(s["metric"]["gpu"], s["metric"]["pod"]) for s in whole] == [
        ("2", "vllm-predictor-00001-deployment-5b7c6d8e9-q4r8s")]
    sm = query(prometheus_url, 'DCGM_FI_PROF_SM_ACTIVE{gpu="2"}')
    assert [s["value"][1] for s in sm] == ["0.58"]


def test_the_extender_scores_the_mig_node_from_what_prometheus_scraped(prometheus_url: str, tmp_path: Path) -> None:
    first_result(prometheus_url, "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
    answers = {name: vector(_answer(prometheus_url, promql)) for name, promql in queries().items()}
    polled = snapshot(answers)["h100-node"]
    state = node_facts(_agent_node(tmp_path)).state
    # GPU 0: 2g at 61 %, 1g at 35 %, 1g idle, 3g at 88 %, weighted by compute slices over 7.
    by_uuid = {s.uuid: s.percent for s in polled.samples if s.mig}
    assert [round(by_uuid[g.uuid], 2) for g in state.mig_gpus] == [round((2 * 61 + 35 + 3 * 88) / 7, 2),
                                                                   round((47 + 12) / 7, 2)]
    one_g = gpu_request({"spec": {"containers": [{"name": "m", "resources": {
        "limits": {"nvidia.com/mig-1g.10gb": "1"}}}]}})
    now = max(s.at for s in polled.samples)
    from_prometheus = read_utilization(one_g, state, polled, now=now, max_age=60)
    from_annotation = read_utilization(one_g, state, None, now=state.reported.newest if state.reported else 0,
                                       max_age=60)
    assert from_prometheus.percent == pytest.approx((47 + 12) / 7)  # the idler GPU with a free 1g instance
    assert from_annotation.percent is not None and abs(from_annotation.percent - from_prometheus.percent) < 5


def _answer(url: str, promql: str) -> Any:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
        return json.load(r)


def _agent_node(tmp_path: Path) -> dict[str, Any]:
    """The Node as the agent leaves it: its `--once` inventory as the annotation, with GFD's labels."""
    once = subprocess.run([sys.executable, "-m", "node_agent", "--node-name", "h100-node", "--fake-gpus",
                           str(FAKE_GPUS), "--once", "--metrics-port", "0", "--pod-resources-socket", ""],
                          cwd=ROOT, env=agent_env(), capture_output=True, text=True, timeout=60, check=True)
    allocatable = {"nvidia.com/gpu": "2", "nvidia.com/mig-1g.10gb": "9", "nvidia.com/mig-2g.20gb": "1",
                   "nvidia.com/mig-3g.40gb": "1"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "h100-node", "annotations": {ANNOTATION: once.stdout.strip().splitlines()[-1]},
        "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "4",
                   "nvidia.com/mig.strategy": "mixed"}}, "status": {"allocatable": allocatable}}

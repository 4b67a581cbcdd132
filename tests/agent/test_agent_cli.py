"""`gpuguard agent` / `python -m node_agent` as processes: one-shot runs, serving, signals, and refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuguard.contracts.node_inventory import ANNOTATION, parse_inventory
from node_agent.cli import main
from node_agent.timeslicing import LABEL

from .apiserver import FakeApiServer
from .conftest import ROOT, RunAgent, agent_env, free_port, load_agent_data
from .conftest import http_get as get

EXAMPLES = ROOT / "examples" / "fake-gpus"
NODES = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "t4-node", "labels": {"nvidia.com/gpu.product": "Tesla-T4"}}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "h100-node", "labels": {}}},
]


def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(NODES))
    return path


def annotation(path: Path, node: str) -> Any:
    items = yaml.safe_load(path.read_text())["items"]
    metadata = next(i["metadata"] for i in items if i["metadata"]["name"] == node)
    return metadata, parse_inventory(metadata["annotations"][ANNOTATION])


def test_one_cycle_publishes_to_a_cluster_state_file(run_agent: RunAgent, tmp_path: Path) -> None:
    state = cluster_file(tmp_path)
    result = run_agent(["--node-name", "h100-node", "--fake-gpus", str(EXAMPLES / "h100-mig.yaml"),
                        "--cluster-state", str(state), "--once"])
    assert result.returncode == 0, result.stderr
    printed = parse_inventory(result.stdout.strip().splitlines()[-1])
    metadata, stored = annotation(state, "h100-node")
    assert stored == printed
    assert [len(g.mig.devices) for g in stored.gpus] == [4, 7, 0, 0]
    assert LABEL not in (metadata.get("labels") or {})  # no time-slicing rule matches an H100


def test_python_m_node_agent_runs_the_nvml_backend_end_to_end(run_agent: RunAgent, tmp_path: Path) -> None:
    state = cluster_file(tmp_path)
    config = load_agent_data("nvml-node.json")
    result = run_agent(["--node-name", "t4-node", "--backend", "nvml", "--cluster-state", str(state), "--once"],
                       nvml_config=config, module="node_agent")
    assert result.returncode == 0, result.stderr
    metadata, stored = annotation(state, "t4-node")
    assert [g.uuid for g in stored.gpus] == [g["uuid"] for g in config["gpus"]]
    assert [d.profile for d in stored.gpus[0].mig.devices] == ["1g.10gb+me", "1g.20gb", "3g.40gb"]
    assert stored.driver == "550.54.15"
    assert LABEL not in metadata["labels"], "a one-shot run writes the entry and leaves the label for the kubelet"


def test_against_an_api_server_the_entry_is_written_and_the_label_left_for_later(run_agent: RunAgent,
                                                                                 tmp_path: Path) -> None:
    with FakeApiServer(NODES) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        result = run_agent(["--node-name", "t4-node", "--fake-gpus", str(EXAMPLES / "t4.yaml"),
                            "--kubeconfig", str(kubeconfig), "--once"])
        writes = [(r.method, r.path, sorted(((r.body or {}).get("metadata") or {}).get("labels") or {}))
                  for r in server.writes()]
        node = server.nodes["t4-node"]
    assert result.returncode == 0, result.stderr
    assert writes == [
        ("PATCH", "/api/v1/nodes/t4-node", []),  # the annotation
        ("POST", "/api/v1/namespaces/gpu-operator/configmaps", ["app.kubernetes.io/managed-by"]),
    ]  # no label yet: the kubelet may not have projected the new entry into the device plugin's volume
    assert parse_inventory(node["metadata"]["annotations"][ANNOTATION]).gpus[0].product == "Tesla-T4"


def test_with_no_settle_time_the_label_follows_the_entry_in_the_same_run(run_agent: RunAgent, tmp_path: Path) -> None:
    """`--time-slicing-settle 0` is for clusters where no kubelet projects the ConfigMap (the demo's state file)."""
    with FakeApiServer(NODES) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        result = run_agent(["--node-name", "t4-node", "--fake-gpus", str(EXAMPLES / "t4.yaml"),
                            "--kubeconfig", str(kubeconfig), "--once", "--time-slicing-settle", "0"])
        labels = [sorted(((r.body or {}).get("metadata") or {}).get("labels") or {}) for r in server.writes()]
        node = server.nodes["t4-node"]
    assert result.returncode == 0, result.stderr
    assert labels[-1] == [LABEL] and node["metadata"]["labels"][LABEL].startswith("gpuguard-ts")


def test_an_api_server_that_fails_makes_a_one_shot_run_fail(run_agent: RunAgent, tmp_path: Path) -> None:
    with FakeApiServer(NODES) as server:
        server.fail_next = [503]
        result = run_agent(["--node-name", "t4-node", "--fake-gpus", str(EXAMPLES / "t4.yaml"),
                            "--kubeconfig", str(server.write_kubeconfig(tmp_path / "kubeconfig")), "--once"])
    assert result.returncode == 1
    assert "Kubernetes API error (read node t4-node: HTTP 503" in result.stderr


def test_without_a_driver_nvml_refuses_to_start_unless_told_to_fall_back(run_agent: RunAgent) -> None:
    no_driver = {"initError": "DRIVER_NOT_LOADED", "gpus": []}
    refused = run_agent(["--backend", "nvml", "--once"], nvml_config=no_driver)
    assert refused.returncode == 2
    assert "gpuguard agent: NVML failed to initialise (DriverNotLoaded" in refused.stderr
    fallen_back = run_agent(["--backend", "nvml", "--fallback-to-null", "--once"], nvml_config=no_driver)
    assert fallen_back.returncode == 0, fallen_back.stderr
    assert json.loads(fallen_back.stdout)["gpus"] == []
    assert fallen_back.stderr.count("no GPU backend: NVML failed to initialise") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "fake"], "--backend fake needs --fake-gpus FILE"),
    (["--fake-gpus", "missing.yaml"], "cannot read missing.yaml"),
    (["--backend", "null", "--cluster-state", "cluster.yaml"], "give --node-name or set NODE_NAME"),
    (["--backend", "null", "--interval", "0"], "--interval must be positive"),
    (["--backend", "null", "--time-slicing-settle", "-1"], "--time-slicing-settle must be 0 or more seconds"),
    (["--backend", "null", "--policy", "POLICY"], "timeSlicing.nodes[0].replicas"),
    (["--backend", "null", "--in-cluster", "--node-name", "n"], "cannot load the in-cluster service account"),
])
def test_bad_input_exits_2_saying_what_to_fix(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("NODE_NAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(variable, raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "examples" / "policy.yaml").read_text().replace("replicas: 4", "replicas: 1"))
    assert main([arg.replace("POLICY", str(policy)) for arg in args] + ["--once"]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def serving_agent(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuguard", "agent", "--node-name", "h100-node", "--fake-gpus",
         str(EXAMPLES / "h100-mig.yaml"), "--host", "127.0.0.1", "--metrics-port", str(port), "--interval", "1"],
        cwd=ROOT, env=agent_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if get(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_the_agent_serves_metrics_and_probes_and_stops_cleanly_on_sigterm(
    serving_agent: tuple[subprocess.Popen[str], str]
) -> None:
    process, url = serving_agent
    assert get(f"{url}/readyz") == (200, '{"status": "ready"}')
    assert get(f"{url}/healthz") == (200, '{"status": "ok"}')
    status, metrics = get(f"{url}/metrics")
    assert status == 200
    assert 'DCGM_FI_DEV_FB_USED{DCGM_FI_DRIVER_VERSION="550.54.15",GPU_I_ID="2",GPU_I_PROFILE="3g.40gb"' in metrics
    assert 'DCGM_FI_DEV_GPU_UTIL{DCGM_FI_DRIVER_VERSION="550.54.15",Hostname="h100-node"' in metrics
    assert "process_resident_memory_bytes" in metrics
    openmetrics_first = urllib.request.Request(f"{url}/metrics", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    with urllib.request.urlopen(openmetrics_first, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")  # as dcgm-exporter serves
    assert get(f"{url}/nope")[0] == 404
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "serving metrics only" in stderr
    assert "received SIGTERM, stopping" in stderr

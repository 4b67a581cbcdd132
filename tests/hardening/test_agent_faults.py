"""The node agent as a process, with NVML failing mid-run and the API server gone: it keeps serving metrics, backs
off, and recovers when both come back.

NVML is the fake libnvidia-ml.so.1 of the agent tests (re-read when its config file changes), the API server the
agent tests' stand-in, reached through a kubeconfig by the official client; the outage closes its port, so the
agent's calls are refused exactly as with an API server that is down, and it comes back on the same address.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuguard.contracts.node_inventory import ANNOTATION, parse_inventory
from tests.agent.apiserver import FakeApiServer
from tests.agent.conftest import ROOT, agent_env, build_fake_nvml, free_port, http_get, load_agent_data

NODE = "gpu-node"
NODES = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {}}}]
INTERVAL = 0.2
GPUS = load_agent_data("nvml-node.json")
BROKEN = {**GPUS, "fail": {"nvmlSystemGetDriverVersion": "UNKNOWN"},
          "gpus": [{**gpu, "lost": True} for gpu in GPUS["gpus"]]}
"""Every GPU answers GpuIsLost to every call, and the driver version cannot be read."""


@pytest.fixture(scope="module")
def nvml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_nvml(tmp_path_factory.mktemp("fakenvml"))


def swap_in(config: dict[str, Any], path: Path) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps(config))
    os.replace(temporary, path)  # a new inode: the fake library notices


def scrape(url: str) -> dict[str, float]:
    """Every sample of one scrape, keyed `name{labels}` (the request must succeed)."""
    status, text = http_get(f"{url}/metrics")
    assert status == 200
    return {f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict[str, float], name: str) -> float:
    return sum(value for key, value in samples.items() if key.startswith(name + "["))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def published_gpus(server: FakeApiServer) -> int | None:
    annotations = server.nodes[NODE]["metadata"].get("annotations") or {}
    return len(parse_inventory(annotations[ANNOTATION]).gpus) if ANNOTATION in annotations else None


@pytest.fixture
def agent(nvml_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path, int]]:
    config = tmp_path / "nvml.json"
    swap_in(GPUS, config)
    api_port, metrics_port = free_port(), free_port()
    with FakeApiServer(NODES, port=api_port) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    process = subprocess.Popen(
        [sys.executable, "-m", "node_agent", "--node-name", NODE, "--backend", "nvml", "--kubeconfig",
         str(kubeconfig), "--interval", str(INTERVAL), "--host", "127.0.0.1", "--metrics-port", str(metrics_port)],
        cwd=ROOT, env=agent_env(nvml_dir=nvml_dir, nvml_config=config), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        yield process, f"http://127.0.0.1:{metrics_port}", config, api_port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_nvml_failing_and_the_api_server_down_the_agent_serves_backs_off_and_recovers(
    agent: tuple[subprocess.Popen[str], str, Path, int]
) -> None:
    process, url, config, api_port = agent
    with FakeApiServer(NODES, port=api_port) as server:
        wait_for(lambda: published_gpus(server) == 3, "the first inventory")
    wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, "the agent to be ready")
    assert total(scrape(url), "DCGM_FI_DEV_FB_USED") > 0

    # Both fail at once: every GPU lost to NVML, and the API server's port closed.
    swap_in(BROKEN, config)
    outage_started = time.monotonic()
    scrapes = []
    while time.monotonic() - outage_started < 2.5:
        scrapes.append(scrape(url))  # every scrape during the outage answers 200
        time.sleep(0.1)
    during = scrapes[-1]
    assert total(during, "gpuguard_agent_gpus") == 0 and total(during, "DCGM_FI_DEV_FB_USED") == 0
    assert total(during, "gpuguard_agent_nvml_errors_total") > 0
    api_errors = total(during, "gpuguard_agent_api_errors_total")
    cycles = (time.monotonic() - outage_started) / INTERVAL
    assert 2 <= api_errors <= 6 < cycles, "retries back off (0.2, 0.4, 0.8, 1.6 s ...) instead of every cycle"
    assert http_get(f"{url}/healthz")[0] == 200

    # Both come back: the agent reads the GPUs again and, at its next retry, publishes them.
    swap_in(GPUS, config)
    with FakeApiServer(NODES, port=api_port) as server:
        wait_for(lambda: published_gpus(server) == 3, "the inventory after the outage")
        assert server.writes(), "the agent wrote to the API server again"
    after = scrape(url)
    assert total(after, "gpuguard_agent_gpus") == 3 and total(after, "DCGM_FI_DEV_FB_USED") > 0
    errors_when_back = total(after, "gpuguard_agent_api_errors_total")
    time.sleep(5 * INTERVAL)
    assert total(scrape(url), "gpuguard_agent_api_errors_total") == errors_when_back, "healthy again: no errors"

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    delays = [float(d) for d in re.findall(r"Kubernetes API error \(.*?\); retrying in (\d+) s", stderr)]
    assert len(delays) >= api_errors and delays == sorted(delays), "each refusal logged, the wait never shrinking"

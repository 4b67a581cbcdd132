"""A real Prometheus server scrapes a running agent, and the extender's kind of query finds the node's GPUs."""

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

from .conftest import ROOT, agent_env, free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus_url(tmp_path: Path) -> Iterator[str]:
    assert Path(PROMETHEUS).exists(), "the prometheus server is needed (apt-get install prometheus)"
    agent_port, port = free_port(), free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "gpuguard", "agent", "--node-name", "h100-node", "--fake-gpus",
         str(ROOT / "examples" / "fake-gpus" / "h100-mig.yaml"), "--host", "127.0.0.1",
         "--metrics-port", str(agent_port)],
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

"""Against a real Prometheus server (the Debian package), scraping an endpoint that serves DCGM-named series.

The test starts Prometheus on 127.0.0.1 with a 1 s scrape interval, waits for the first samples (a few seconds), then
checks both the poller on its own and a whole `gpuguard extender` process reading utilization from it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gpuguard.policy.gpustate import GpuRequest, NodeGpuState
from gpuguard.policy.scoring import filter_nodes, score_nodes
from scheduler_ext.utilization import PollerSettings, PrometheusPoller, UtilizationBoard
from tests.extender.conftest import CLUSTER, payload, policy_with

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
ROOT = Path(__file__).resolve().parents[2]


def dcgm_exposition() -> str:
    """What dcgm-exporter (old and new label spelling) and the gpuguard agent serve, trimmed to what matters."""
    lines = ["# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).", "# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
    model = 'modelName="NVIDIA A100-SXM4-80GB"'
    for gpu in range(8):  # the old exporter's `Hostname`: every GPU at 97 %
        lines.append(f'DCGM_FI_DEV_GPU_UTIL{{gpu="{gpu}",UUID="GPU-a1-{gpu}",device="nvidia{gpu}",{model},'
                     f'Hostname="gpu-a100-1",DCGM_FI_DRIVER_VERSION="550.54.15"}} 97')
    for gpu in range(8):  # the renamed `hostname`: mostly idle
        lines.append(f'DCGM_FI_DEV_GPU_UTIL{{gpu="{gpu}",UUID="GPU-a0-{gpu}",device="nvidia{gpu}",{model},'
                     f'hostname="gpu-a100-0"}} {10 if gpu < 4 else 85}')
    lines += ["# HELP DCGM_FI_PROF_GR_ENGINE_ACTIVE Ratio of time the graphics engine is active.",
              "# TYPE DCGM_FI_PROF_GR_ENGINE_ACTIVE gauge"]
    for gi, profile, ratio in (("1", "3g.40gb", 0.9), ("2", "1g.10gb", 0.2)):
        lines.append(f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="GPU-h0",modelName="NVIDIA H100 80GB HBM3",'
                     f'GPU_I_PROFILE="{profile}",GPU_I_ID="{gi}",Hostname="gpu-h100-mig-a"}} {ratio}')
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import asyncio
    import threading

    exporter_port, prometheus_port = free_port(), free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=dcgm_exposition(), content_type="text/plain")

    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", exporter_port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dcgm", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }))
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        wait_for_samples(url, process, work / "prometheus.log")
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def wait_for_samples(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    query = urllib.parse.urlencode({"query": "count(DCGM_FI_DEV_GPU_UTIL) + count(DCGM_FI_PROF_GR_ENGINE_ACTIVE)"})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=2) as reply:
                result = json.load(reply)["data"]["result"]
            if result and float(result[0]["value"][1]) == 18:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError("no samples from prometheus")


async def test_the_poller_reads_dcgm_series_through_a_real_prometheus(prometheus_url: str) -> None:
    import aiohttp

    board = UtilizationBoard()
    poller = PrometheusPoller(PollerSettings(prometheus_url, interval=60, timeout=5), board)
    async with aiohttp.ClientSession() as session:
        assert await poller.refresh(session)
    assert set(board.nodes) == {"gpu-a100-0", "gpu-a100-1", "gpu-h100-mig-a"}
    assert board.nodes["gpu-a100-1"].whole == (97.0,) * 8
    assert sorted(board.nodes["gpu-a100-0"].whole) == [10.0] * 4 + [85.0] * 4
    mig = board.nodes["gpu-h100-mig-a"].samples[0]
    assert mig.mig and mig.percent == pytest.approx((90 * 3 + 20 * 1) / 7)
    assert time.time() - board.nodes["gpu-a100-0"].newest < 30

    nodes = [NodeGpuState(n, "A100", {"nvidia.com/gpu": 8}, {}, physical_gpus=8) for n in ("gpu-a100-0", "gpu-a100-1")]
    scheduling, now = policy_with().scheduling, time.time()
    request = GpuRequest((("nvidia.com/gpu", 1),))
    passed, refused = filter_nodes(request, nodes, utilization=board.nodes, scheduling=scheduling, now=now)
    assert [s.name for s in passed] == ["gpu-a100-0"]
    assert refused[0].cause == "utilization"
    relaxed = policy_with(maxGpuUtilization=100).scheduling
    found = score_nodes(request, nodes, utilization=board.nodes, scheduling=relaxed, now=now)
    assert found[0] > found[1]  # the busy node loses


def test_the_extender_process_filters_out_a_node_prometheus_reports_saturated(prometheus_url: str) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "gpuguard", "extender", "--host", "127.0.0.1", "--port", str(port),
         "--cluster-state", str(CLUSTER), "--prometheus-url", prometheus_url, "--prometheus-interval", "1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline, reply = time.time() + 20, {}
        while time.time() < deadline:
            try:
                reply = post(port, "/filter", payload("names"))
                if "gpu-a100-1" in reply.get("FailedAndUnresolvableNodes", {}):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert reply["NodeNames"] == ["gpu-a100-0"]
        assert "97%" in reply["FailedAndUnresolvableNodes"]["gpu-a100-1"]
    finally:
        process.terminate()
        assert process.wait(10) == 0


def post(port: int, path: str, body: bytes) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.load(reply)

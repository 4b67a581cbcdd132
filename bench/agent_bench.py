"""Benchmark the node agent: one scrape of 8 MIG GPUs, and the agent's CPU and memory at its normal interval.

    python bench/agent_bench.py                 # all three numbers (about 3 minutes: the CPU window is 150 s)
    python bench/agent_bench.py --duration 60   # a shorter CPU window

Targets: one scrape of 8 GPUs with MIG devices, GPM activity and pod attribution through the fake NVML library
<= 5 ms; CPU at a 15 s interval < 1 % of one core; resident memory < 60 MB. The GPUs come from the fake
libnvidia-ml.so.1 of the tests (compiled here with gcc) serving tests/data/agent/nvml-8xh100-mig.json: 8 H100s, each
with seven 1g.10gb instances with GPM, read through the real pynvml. The tests' stand-in kubelet answers PodResources
`List` on a unix socket with tests/data/agent/podresources-8xh100-mig.json (each instance held by a pod of its own,
96 pods). The agent talks to the tests' stand-in API server through the official client, as in a cluster. Numbers
are printed, never asserted: this is a shared machine, compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.agent.apiserver import FakeApiServer  # noqa: E402  (the tests' stand-in for kube-apiserver)
from tests.agent.kubelet import FakeKubelet  # noqa: E402  (the tests' stand-in for the kubelet's PodResources API)

SOURCE = ROOT / "tests" / "agent" / "fakenvml" / "fakenvml.c"
NODE = ROOT / "tests" / "data" / "agent" / "nvml-8xh100-mig.json"
TICKS = os.sysconf("SC_CLK_TCK")

PODS = ROOT / "tests" / "data" / "agent" / "podresources-8xh100-mig.json"

SCRAPE_CHILD = """
import json, statistics, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest
from node_agent.collector import GpuCollector
from node_agent.metrics import AgentMetrics
from node_agent.nvml import NvmlBackend
from node_agent.podresources import PodResourcesClient

# GPM measures on every read here (min interval 0: the worst case); the kubelet is asked on the client's own
# thread every 5 s, as in the agent, and its List is timed on its own below.
backend = NvmlBackend(gpm_min_interval=0)
pods = PodResourcesClient(Path(sys.argv[2]), max_age=5)
pods.start()
lister = PodResourcesClient(Path(sys.argv[2]), max_age=0)
registry = CollectorRegistry()
registry.register(GpuCollector(backend, hostname="bench-node", metrics=AgentMetrics(registry), pods=pods))
rounds = int(sys.argv[1])
for _ in range(20):
    generate_latest(registry)  # warm up: first reads probe the MIG profile table and unsupported fields
scrapes, reads, cpu = [], [], []
for _ in range(rounds):
    started, started_cpu = time.perf_counter(), time.process_time()
    body = generate_latest(registry)
    scrapes.append(time.perf_counter() - started)
    cpu.append(time.process_time() - started_cpu)
for _ in range(rounds):
    started = time.perf_counter()
    backend.read()
    reads.append(time.perf_counter() - started)
lists = []
for _ in range(rounds):
    started = time.perf_counter()
    lister.allocations()
    lists.append(time.perf_counter() - started)
text = body.decode()
print(json.dumps({"scrape": scrapes, "cpu": cpu, "read": reads, "list": lists, "bytes": len(body),
                  "samples": sum(1 for line in text.splitlines() if line and not line.startswith("#")),
                  "attributed": text.count('pod="'), "engine": text.count("DCGM_FI_PROF_GR_ENGINE_ACTIVE{")}))
"""


def build_library(directory: Path) -> Path:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        sys.exit("gcc is needed to build the fake libnvidia-ml.so.1")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wl,-soname,libnvidia-ml.so.1", "-o",
                    str(directory / "libnvidia-ml.so.1"), str(SOURCE), "-lpthread"], check=True)
    return directory


def environment(library: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LD_LIBRARY_PATH": str(library),
            "FAKE_NVML_CONFIG": str(NODE)}


def milliseconds(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return f"median {statistics.median(ordered) * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, max {ordered[-1] * 1e3:.2f} ms"


def bench_scrape(library: Path, socket: Path, rounds: int) -> None:
    result = subprocess.run([sys.executable, "-c", SCRAPE_CHILD, str(rounds), str(socket)],
                            env=environment(library), cwd=ROOT, capture_output=True, text=True, check=True)
    numbers = json.loads(result.stdout)
    print(f"scrape of 8 GPUs x 7 MIG devices (NVML read with GPM + pod attribution + exposition, {numbers['samples']} "
          f"samples, {numbers['engine']} of them GR_ENGINE_ACTIVE, {numbers['attributed']} with a pod, "
          f"{numbers['bytes']} bytes), {rounds} rounds: {milliseconds(numbers['scrape'])}")
    print(f"  CPU time of the same scrapes: {milliseconds(numbers['cpu'])}")
    print(f"  the NVML read alone (GPM included): {milliseconds(numbers['read'])}")
    print(f"  the kubelet List alone (96 pods; on the client's thread every 5 s, not in the scrape): "
          f"{milliseconds(numbers['list'])}")
    print(f"  (load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def process_memory_mib(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"the agent at {url} did not become ready")


def bench_process(library: Path, kubeconfig: Path, socket: Path | None, duration: float, command: list[str],
                  label: str) -> None:
    port = 19471
    args = ["--node-name", "bench-node", "--backend", "nvml", "--kubeconfig", str(kubeconfig), "--interval", "15",
            "--host", "127.0.0.1", "--metrics-port", str(port), "--pod-resources-socket", str(socket or "")]
    agent = subprocess.Popen([sys.executable, "-m", *command, *args], env=environment(library), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        time.sleep(1)  # let the first cycle (node read, annotation, time-slicing plan) finish
        stop = threading.Event()
        scraper = threading.Thread(target=scrape_every, args=(url, 15.0, stop), daemon=True)
        cpu_before, started = process_cpu_seconds(agent.pid), time.monotonic()
        scraper.start()
        stop.wait(duration)
        stop.set()
        cpu = process_cpu_seconds(agent.pid) - cpu_before
        elapsed = time.monotonic() - started
        rss, peak = process_memory_mib(agent.pid)
        memory = process_memory_split(agent.pid)
        http = [timed_scrape(url) for _ in range(50)]
        attributed = scrape_text(url).count('pod="')
    finally:
        agent.terminate()
        agent.wait(timeout=10)
    print(f"{label}: CPU {cpu / elapsed * 100:.3f} % of one core over {elapsed:.0f} s "
          f"(interval 15 s, Prometheus scraping every 15 s); resident memory {rss:.1f} MiB (peak {peak:.1f} MiB; "
          f"{memory}); {attributed} samples with a pod")
    print(f"  GET /metrics as Prometheus asks for it (OpenMetrics preferred, gzip), 50 requests: {milliseconds(http)}")


PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


def process_memory_split(pid: int) -> str:
    """Anonymous (the process' own) and file-backed (mapped code, shared with every process mapping the same
    files) parts of the resident set."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    anon, file = (int(status[key].split()[0]) / 1024 for key in ("RssAnon", "RssFile"))
    return f"anonymous {anon:.1f} MiB, file-backed {file:.1f} MiB"


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return str(response.read().decode())


def timed_scrape(url: str) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/metrics", headers=PROMETHEUS_HEADERS)
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
    return time.perf_counter() - started


def scrape_every(url: str, interval: float, stop: threading.Event) -> None:
    while not stop.is_set():
        timed_scrape(url)
        stop.wait(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="scrapes to time (default 300)")
    parser.add_argument("--duration", type=float, default=150, help="seconds of the CPU window (default 150)")
    args = parser.parse_args()
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bench-node", "labels": {}}}
    with (tempfile.TemporaryDirectory() as temporary, FakeApiServer([node]) as api_server,
          FakeKubelet(Path(temporary) / "kubelet.sock", json.loads(PODS.read_text())) as kubelet):
        work = Path(temporary)
        library = build_library(work)
        kubeconfig = api_server.write_kubeconfig(work / "kubeconfig")
        bench_scrape(library, kubelet.socket, args.rounds)
        bench_process(library, kubeconfig, kubelet.socket, args.duration, ["node_agent"], "python -m node_agent")
        bench_process(library, kubeconfig, kubelet.socket, min(args.duration, 30), ["gpuguard", "agent"],
                      "gpuguard agent (memory includes the other services' modules)")
        bench_process(library, kubeconfig, None, min(args.duration, 20), ["node_agent"],
                      "python -m node_agent --pod-resources-socket '' (no attribution: gRPC never loaded)")
        print(f"(the agents made {len(api_server.requests)} API requests in all: "
              f"{', '.join(sorted({f'{r.method} {r.path}' for r in api_server.requests}))})")


if __name__ == "__main__":
    main()

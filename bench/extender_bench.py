"""Extender benchmark: filter/prioritize latency at a steady pod rate, by cluster size, and full-Node requests.

    python bench/extender_bench.py [--nodes 500,5000,20000] [--rate 100] [--seconds 20] [--gc tuned,default]
                                   [--full-nodes 5000] [--full-calls 15]

Names mode (`nodeCacheCapable: true`, the cache warm): the extender runs as a real process (`gpuguard extender
--kubeconfig`) watching a stand-in API server (tests/extender/fake_apiserver.py) that holds N realistic GPU nodes
(GFD labels, the agent's inventory annotation, MIG nodes, time-sliced nodes) and their pods. Pods arrive at a steady
rate (open loop); each is handled as kube-scheduler does: POST /filter with every node its own resource fit would
keep (percentageOfNodesToScore: 100, the worst case), POST /prioritize with the survivors, bind to the best-scored
node (a pod ADDED to the watch, so the extender's cache churns exactly as in a cluster), and an older pod departs
for each arrival so the cluster stays about half full. Latency is measured per call by the client.

Full-Node mode (`nodeCacheCapable: false`): the same cluster's Node objects in every request; the first call builds
every node's state, later calls reuse it for nodes whose resourceVersion did not change.

Soak (60 s at 200 pods/s on 5,000 nodes; resident memory at the start and end of the load, and filter p99 in each
half, show any growth): `python bench/extender_bench.py --nodes 5000 --gc tuned --rate 200 --seconds 60
--full-nodes 0`.

Timings vary with the machine's load (a shared 2-core box runs client, API server and extender at once): compare
within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpuguard.contracts.node_inventory import ANNOTATION  # noqa: E402
from gpuguard.policy import gpustate  # noqa: E402
from gpuguard.policy.gpuindex import GpuIndex  # noqa: E402
from gpuguard.policy.gpustate import GpuRequest, NodeGpuState  # noqa: E402
from tests.extender.fake_apiserver import FakeApiServer  # noqa: E402

A100, H100, T4 = "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3", "Tesla-T4"
SHAPES: list[tuple[str, int, str | None, float]] = [
    # (resource, count, product selector, weight): LLMs on whole GPUs (a fifth ask for 4 or 8), small models on MIG
    ("nvidia.com/gpu", 1, A100, 30), ("nvidia.com/gpu", 2, A100, 15), ("nvidia.com/gpu", 4, A100, 12),
    ("nvidia.com/gpu", 8, A100, 8), ("nvidia.com/gpu", 1, H100, 10), ("nvidia.com/mig-1g.10gb", 1, None, 12),
    ("nvidia.com/mig-3g.40gb", 1, None, 5), ("nvidia.com/gpu", 1, T4, 8),
]


# ------------------------------------------------------------------------------------------------------ the cluster


def node_object(index: int, rnd: random.Random, now: str) -> dict[str, Any]:
    name = f"gpu-node-{index:05d}.eu-west-1.compute.internal"
    kind = rnd.choices(["a100", "h100-mig", "t4"], [70, 20, 10])[0]
    labels = {
        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "p4d.24xlarge", "topology.kubernetes.io/region": "eu-west-1",
        "topology.kubernetes.io/zone": f"eu-west-1{'abc'[index % 3]}", "nvidia.com/gpu.present": "true",
        "nvidia.com/cuda.driver-version.full": "550.54.15", "nvidia.com/gfd.timestamp": "1772445591",
    }
    if kind == "a100":
        product, allocatable, gpus = A100, {"nvidia.com/gpu": "8"}, [_gpu(name, i, A100, rnd) for i in range(8)]
    elif kind == "t4":
        product, allocatable, gpus = T4, {"nvidia.com/gpu": "4"}, [_gpu(name, 0, T4, rnd)]
        labels.update({"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"})
    else:
        product = H100
        allocatable = {"nvidia.com/gpu": "6", "nvidia.com/mig-1g.10gb": "9", "nvidia.com/mig-2g.20gb": "1",
                       "nvidia.com/mig-3g.40gb": "1"}
        gpus = [_gpu(name, i, H100, rnd) for i in range(6)] + [_mig_gpu(name, 6, True), _mig_gpu(name, 7, False)]
        labels["nvidia.com/mig.strategy"] = "mixed"
    labels.update({"nvidia.com/gpu.product": product, "nvidia.com/gpu.count": str(len(gpus))})
    inventory = {"v": 1, "ts": now, "driver": "550.54.15", "gpus": gpus}
    base = {"cpu": "96", "memory": "1176084656Ki", "ephemeral-storage": "1055762868Ki", "pods": "110"}
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {
            "name": name, "uid": f"6f0c{index:08d}-3b1e-4f7a-9c2d-5e8f0a1b2c3d",
            "creationTimestamp": "2026-02-20T08:15:42Z", "labels": labels,
            "annotations": {ANNOTATION: json.dumps(inventory, separators=(",", ":")),
                            "node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": {"podCIDR": f"10.{index // 250}.{index % 250}.0/24", "providerID": f"aws:///eu-west-1a/i-0{index:016x}",
                 "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {**base, **allocatable}, "allocatable": {**base, **allocatable},
            "conditions": [{"type": t, "status": "False", "lastHeartbeatTime": now, "lastTransitionTime": now,
                            "reason": f"KubeletHasNo{t}", "message": f"kubelet has no {t}"}
                           for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
            + [{"type": "Ready", "status": "True", "lastHeartbeatTime": now, "lastTransitionTime": now,
                "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": f"10.0.{index // 250}.{index % 250}"},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.29.3", "containerRuntimeVersion": "containerd://1.7.13",
                         "kernelVersion": "5.15.0-1056-aws", "osImage": "Ubuntu 22.04.4 LTS", "architecture": "amd64",
                         "operatingSystem": "linux", "machineID": f"{index:032x}"},
        },
    }


def _gpu(node: str, index: int, product: str, rnd: random.Random) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{node.split('.')[0][-5:]}-{index:02d}-5f0e-4a6b", "product": product,
            "memoryMiB": 81920, "utilPercent": float(rnd.choice([0, 0, 5, 20, 45, 70, 90])), "memoryUsedMiB": 0,
            "mig": {"enabled": False, "devices": []}}


def _mig_gpu(node: str, index: int, balanced: bool) -> dict[str, Any]:
    layout = [("3g.40gb", 0, 4), ("2g.20gb", 4, 2), ("1g.10gb", 6, 1), ("1g.10gb", 7, 1)] if balanced else [
        ("1g.10gb", s, 1) for s in range(7)]
    layout = [(p, s, z) for p, s, z in layout if not (p == "1g.10gb" and s == 7)]  # 1g starts at 0..6 only
    devices = [{"profile": p, "start": s, "size": z, "uuid": f"MIG-{node.split('.')[0][-5:]}-{index:02d}-{s}",
                "busy": False} for p, s, z in layout]
    return {"index": index, "uuid": f"GPU-{node.split('.')[0][-5:]}-{index:02d}-5f0e-4a6b", "product": H100,
            "memoryMiB": 81559, "utilPercent": None, "memoryUsedMiB": 0, "mig": {"enabled": True, "devices": devices}}


def pod_object(name: str, resource: str, count: int, product: str | None, node: str | None) -> dict[str, Any]:
    selector = {"nvidia.com/gpu.present": "true", **({"nvidia.com/gpu.product": product} if product else {})}
    spec: dict[str, Any] = {
        "schedulerName": "gpuguard-scheduler", "nodeSelector": selector,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {"name": "kserve-container", "image": "vllm/vllm-openai:v0.6.3",
             "resources": {"limits": {"cpu": "4", "memory": "32Gi", resource: str(count)},
                           "requests": {"cpu": "4", "memory": "32Gi", resource: str(count)}}},
            {"name": "queue-proxy", "image": "gcr.io/knative-releases/queue:v1.15",
             "resources": {"requests": {"cpu": "25m"}}},
        ],
    }
    if node:
        spec["nodeName"] = node
    return {"kind": "Pod", "apiVersion": "v1", "spec": spec, "status": {"phase": "Running" if node else "Pending"},
            "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}",
                         "labels": {"serving.kserve.io/inferenceservice": name, "component": "predictor"}}}


class Mirror:
    """The client's own copy of the cluster (what kube-scheduler's cache knows), to pick candidates and bind."""

    def __init__(self, states: dict[str, NodeGpuState]) -> None:
        self.index = GpuIndex(states.values())
        self.names = set(states)
        self.bound: list[tuple[str, str, GpuRequest]] = []

    @property
    def states(self) -> dict[str, NodeGpuState]:
        return self.index.states

    def candidates(self, request: GpuRequest) -> list[str]:
        """What kube-scheduler's NodeResourcesFit and NodeAffinity keep (set operations: the client stays light)."""
        (resource, count), product = request.resources[0], request.product
        among = self.names if product is None else self.names - self.index.not_product(product, self.names)
        return sorted(n for _, names in self.index.free_groups(resource, count, among) for n in names)

    def bind(self, pod: str, node: str, request: GpuRequest) -> None:
        self.index.put(gpustate.bind(self.states[node], request).state)
        self.bound.append((pod, node, request))

    def release_random(self, rnd: random.Random) -> str | None:
        if not self.bound:
            return None
        pod, node, request = self.bound.pop(rnd.randrange(len(self.bound)))
        self.index.put(gpustate.release(self.states[node], request))
        return pod


def build_cluster(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Mirror]:
    from scheduler_ext.inventory.nodes import node_facts

    rnd = random.Random(seed)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    nodes = [node_object(i, rnd, now) for i in range(n)]
    mirror = Mirror({f.name: gpustate.with_used(f.state, {}) for f in map(node_facts, nodes)})
    pods = []
    names = sorted(mirror.states)
    for i in range(n * 2):  # fill about half the GPUs to start with
        resource, count, product = _shape(rnd)
        node = rnd.choice(names)
        state = mirror.states[node]
        if state.free_of(resource) >= count and (product is None or state.product == product):
            name = f"warm-{i}"
            pods.append(pod_object(name, resource, count, product, node))
            mirror.bind(name, node, gpustate.GpuRequest(((resource, count),), product))
    return nodes, pods, mirror


def _shape(rnd: random.Random) -> tuple[str, int, str | None]:
    resource, count, product, _ = rnd.choices(SHAPES, [w for *_, w in SHAPES])[0]
    return resource, count, product


# -------------------------------------------------------------------------------------------------- names mode


def _go_json(value: Any) -> bytes:
    """Compact, as Go's encoding/json writes it (kube-scheduler's HTTPExtender)."""
    return json.dumps(value, separators=(",", ":")).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_extender(args: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "gpuguard", "--log-level", "WARNING", "extender",
                                "--host", "127.0.0.1", "--port", str(port), *args],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, process.pid, 0)  # undo the client's nice for the extender
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                if b" 200 " in sock.recv(100):
                    return process
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"extender exited: {process.stderr.read().decode() if process.stderr else ''}")
        time.sleep(0.2)
    raise RuntimeError("extender not ready after 300 s")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": pick(0.5) * 1e3, "p90_ms": pick(0.9) * 1e3, "p99_ms": pick(0.99) * 1e3,
            "max_ms": ordered[-1] * 1e3, "mean_ms": statistics.fmean(ordered) * 1e3}


async def steady_load(url: str, server: FakeApiServer, mirror: Mirror, *, rate: float, seconds: float,
                      seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    timings: dict[str, list[float]] = {"filter": [], "prioritize": []}
    lag: list[float] = []
    candidates: list[int] = []
    unschedulable = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
        async def call(verb: str, body: bytes) -> Any:
            started = time.perf_counter()
            async with session.post(f"{url}/{verb}", data=body, headers={"Content-Type": "application/json"}) as reply:
                data = await reply.read()
            timings[verb].append(time.perf_counter() - started)
            return json.loads(data)

        start = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            lag.append(time.perf_counter() - due)
            resource, count, product = _shape(rnd)
            request = GpuRequest(((resource, count),), product)
            names = mirror.candidates(request)
            candidates.append(len(names))
            if not names:
                unschedulable += 1
                continue
            pod = pod_object(f"bench-{i}", resource, count, product, None)
            filtered = await call("filter", _go_json({"Pod": pod, "Nodes": None, "NodeNames": names}))
            kept = filtered.get("NodeNames") or []
            if not kept:
                unschedulable += 1
                continue
            scores = await call("prioritize", _go_json({"Pod": pod, "Nodes": None, "NodeNames": kept}))
            best = max(s["Score"] for s in scores)
            node = rnd.choice([s["Host"] for s in scores if s["Score"] == best])
            mirror.bind(pod["metadata"]["name"], node, request)
            server.put(pod_object(pod["metadata"]["name"], resource, count, product, node))
            gone = mirror.release_random(rnd)
            if gone:
                server.delete("Pod", f"bench/{gone}")
        elapsed = time.perf_counter() - start
    halves = {verb: [percentiles(t[: len(t) // 2])["p99_ms"], percentiles(t[len(t) // 2:])["p99_ms"]]
              for verb, t in timings.items()}
    return {"pods": total, "achieved_pods_per_s": total / elapsed, "unschedulable": unschedulable,
            "mean_candidates": statistics.fmean(candidates), "start_lag_p99_ms": percentiles(lag)["p99_ms"],
            "filter": percentiles(timings["filter"]), "prioritize": percentiles(timings["prioritize"]),
            "p99_by_half_ms": halves}


def run_names(n: int, gc_mode: str, *, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    return asyncio.run(_run_names(n, gc_mode, rate=rate, seconds=seconds, seed=seed))


async def _run_names(n: int, gc_mode: str, *, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    nodes, pods, mirror = build_cluster(n, seed)
    server = FakeApiServer()  # in this process's event loop: binding a pod is a direct call, no thread hand-off
    for obj in (*nodes, *pods):
        server.put(obj)
    port = _free_port()
    async with server.serving_here():
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig.json")
            loaded = time.perf_counter()
            process = await asyncio.to_thread(start_extender, ["--kubeconfig", str(kubeconfig), "--gc", gc_mode], port)
            ready_s = time.perf_counter() - loaded
            try:
                cpu, rss_start = _cpu_seconds(process.pid), _rss_mib(process.pid)
                result = await steady_load(f"http://127.0.0.1:{port}", server, mirror, rate=rate, seconds=seconds,
                                           seed=seed)
                result["server_cpu_ms_per_pod"] = (_cpu_seconds(process.pid) - cpu) * 1e3 / result["pods"]
                result["rss_mib"], result["rss_start_mib"] = _rss_mib(process.pid), rss_start
                result["server"] = await server_histograms(f"http://127.0.0.1:{port}")
            finally:
                process.terminate()
                await asyncio.to_thread(process.wait, 10)
    return {"nodes": n, "gc": gc_mode, "ready_s": ready_s, **result}


async def server_histograms(url: str) -> dict[str, dict[str, float]]:
    """The extender's own latency histogram (read body -> encoded reply), as cumulative shares per bucket."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as reply:
            text = await reply.text()
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("gpuguard_extender_request_duration_seconds_bucket"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="')[1].split('"')[0]
            verb = labels.split('verb="')[1].split('"')[0]
            found.setdefault(verb, {})[le] = float(value)
    return {verb: {le: count / buckets["+Inf"] for le, count in buckets.items() if buckets["+Inf"]}
            for verb, buckets in found.items()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU the process used so far: the extender's own cost, whatever else competes for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------------------------- full-Node mode


def run_full(n: int, *, calls: int, seed: int) -> dict[str, Any]:
    """Every request carries the Node objects kube-scheduler's own fit kept for a 1-GPU pod (no product selector)."""
    nodes, pods, mirror = build_cluster(int(n * 1.1), seed)
    request = GpuRequest((("nvidia.com/gpu", 1),))
    feasible = set(mirror.candidates(request))
    sent = [node for node in nodes if node["metadata"]["name"] in feasible][:n]
    for i, node in enumerate(sent):
        node["metadata"]["resourceVersion"] = str(5000 + i)
    pod = pod_object("full-0", "nvidia.com/gpu", 1, None, None)
    body = _go_json({"Pod": pod, "Nodes": {"metadata": {}, "items": sent}, "NodeNames": None})
    server = FakeApiServer()  # pods (what the nodes hold) come from the watch; nodes come in every request
    server.start()
    for obj in pods:
        server.put(obj)
    port = _free_port()
    timings: dict[str, list[float]] = {"filter": [], "prioritize": []}
    reply_bytes = 0

    async def go() -> None:
        nonlocal reply_bytes
        async with aiohttp.ClientSession() as session:
            for _ in range(calls):
                for verb in ("filter", "prioritize"):
                    started = time.perf_counter()
                    async with session.post(f"http://127.0.0.1:{port}/{verb}", data=io.BytesIO(body)) as reply:
                        data = await reply.read()
                    timings[verb].append(time.perf_counter() - started)
                    if verb == "filter":
                        reply_bytes = len(data)
                        assert json.loads(data)["Error"] == ""

    with tempfile.TemporaryDirectory() as tmp:
        process = start_extender(["--kubeconfig", str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))], port)
        try:
            asyncio.run(go())
        finally:
            process.terminate()
            process.wait(10)
            server.stop()
    first = {verb: t[0] * 1e3 for verb, t in timings.items()}
    return {"nodes": len(sent), "request_mb": len(body) / 1e6, "filter_reply_mb": reply_bytes / 1e6,
            "first_call_ms": first, "filter": percentiles(timings["filter"][1:]),
            "prioritize": percentiles(timings["prioritize"][1:])}


# ------------------------------------------------------------------------------------- the request path alone


def request_path(n: int, gc_mode: str, *, requests: int, seed: int) -> dict[str, Any]:
    """The handlers' work without HTTP, in this (fresh) process: parse, decide and encode, per verb.

    CPU time per call is what the code costs whatever else runs on the machine; the wall-time p99 of the whole pod
    (filter + prioritize) shows the garbage collector's pauses, which is what `--gc` changes.
    """
    from gpuguard.contracts.extender import encode_filter_result, encode_priorities, parse_args
    from gpuguard.policy.loading import default_policy
    from scheduler_ext.app import freeze_state, tune_gc
    from scheduler_ext.extender import decide_filter_names, decide_priorities_names
    from scheduler_ext.inventory.store import InventoryStore
    from scheduler_ext.settings import GcSettings

    settings = GcSettings(mode=gc_mode)  # type: ignore[arg-type]
    tune_gc(settings)
    nodes, pods, mirror = build_cluster(n, seed)
    store = InventoryStore()
    store.replace_nodes(nodes)
    store.replace_pods(pods)
    del nodes, pods
    freeze_state(settings)()
    pauses = _watch_gc()
    scheduling, rnd = default_policy().scheduling, random.Random(seed)
    board: dict[str, Any] = {}  # no Prometheus: the agent annotations' utilization counts
    cpu: dict[str, list[float]] = {"filter": [], "prioritize": []}
    wall: list[float] = []
    candidates: list[int] = []
    for i in range(requests):
        resource, count, product = _shape(rnd)
        request = GpuRequest(((resource, count),), product)
        names = mirror.candidates(request)
        candidates.append(len(names))
        body = _go_json({"Pod": pod_object(f"p{i}", resource, count, product, None), "Nodes": None, "NodeNames": names})
        started, c0 = time.perf_counter(), time.process_time()
        args = parse_args(body)
        filtered = decide_filter_names(args, store.index, utilization=board, scheduling=scheduling, now=time.time())
        encode_filter_result(filtered.result)
        c1 = time.process_time()
        hosts, scores = decide_priorities_names(parse_args(body), store.index, utilization=board,
                                                scheduling=scheduling, now=time.time())
        encode_priorities(hosts, scores)
        c2 = time.process_time()
        wall.append(time.perf_counter() - started)
        cpu["filter"].append(c1 - c0)
        cpu["prioritize"].append(c2 - c1)
        best = max(scores, default=0)
        chosen = [h for h, sc in zip(hosts, scores) if sc == best]
        if chosen and best > 0:  # bind, so the cache churns as in a cluster
            node = rnd.choice(chosen)
            bound = pod_object(f"p{i}", resource, count, product, node)
            store.upsert_pod(bound)
            mirror.bind(f"p{i}", node, request)
    return {"nodes": n, "gc": gc_mode, "mean_candidates": statistics.fmean(candidates),
            "filter_cpu": percentiles(cpu["filter"]), "prioritize_cpu": percentiles(cpu["prioritize"]),
            "pod_wall": percentiles(wall), "gc_pauses": {
                f"gen{g}": {"count": len(p), "total_ms": sum(p) * 1e3, "max_ms": max(p, default=0) * 1e3}
                for g, p in sorted(pauses.items())}}


def _watch_gc() -> dict[int, list[float]]:
    """Every garbage collection from now on, by generation, with how long it stopped the process."""
    import gc

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    return pauses


def run_request_path(n: int, gc_mode: str, *, requests: int, seed: int) -> dict[str, Any]:
    """`request_path` in a fresh interpreter, so one mode's heap and GC state cannot colour the other's."""
    command = [sys.executable, __file__, "--request-path-only", f"{n}:{gc_mode}:{requests}:{seed}"]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="500,5000,20000", help="cluster sizes for names mode (comma-separated)")
    parser.add_argument("--rate", type=float, default=100.0, help="pods per second (default 100)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of steady load per size")
    parser.add_argument("--gc", default="tuned,default", help="GC modes to compare at 5000 nodes")
    parser.add_argument("--full-nodes", type=int, default=5000, help="nodes per full-Node request (0: skip)")
    parser.add_argument("--full-calls", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=1000, help="pods for the request-path measurement")
    parser.add_argument("--skip-http", action="store_true", help="only the request-path measurement")
    parser.add_argument("--request-path-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.request_path_only:
        n, mode, requests, seed = args.request_path_only.split(":")
        print(json.dumps(request_path(int(n), mode, requests=int(requests), seed=int(seed))))
        return
    # The load generator and the stand-in API server run in this process; let the extender win the CPU when they
    # compete, as kube-scheduler and the extender would not share a core with them in a cluster.
    os.nice(10)
    results: dict[str, Any] = {"names": [], "full": None, "path": []}
    sizes = [int(x) for x in args.nodes.split(",") if x]
    for n in sizes:
        for mode in (args.gc.split(",") if n == 5000 else ["tuned"]):
            result = run_request_path(n, mode, requests=args.requests, seed=args.seed)
            results["path"].append(result)
            print(json.dumps(result), flush=True)
    if args.skip_http:
        print(summary(results))
        return
    for n in sizes:
        modes = args.gc.split(",") if n == 5000 else ["tuned"]
        for mode in modes:
            result = run_names(n, mode, rate=args.rate, seconds=args.seconds, seed=args.seed)
            results["names"].append(result)
            print(json.dumps(result), flush=True)
    if args.full_nodes:
        results["full"] = run_full(args.full_nodes, calls=args.full_calls, seed=args.seed)
        print(json.dumps(results["full"]), flush=True)
    print(summary(results))


def summary(results: dict[str, Any]) -> str:
    lines = ["", "Request path without HTTP (parse + decide + encode), CPU ms per call and wall ms per pod:", "",
             "| nodes | gc | candidates | filter CPU p50 / p99 | prioritize CPU p50 / p99 | pod wall p50 / p99 / max "
             "| GC gen0 / gen1 / gen2 collections (longest, ms) |", "|---:|---|---:|---:|---:|---:|---|"]
    for r in results["path"]:
        f, p, w, g = r["filter_cpu"], r["prioritize_cpu"], r["pod_wall"], r["gc_pauses"]
        collections = " / ".join(f"{g[k]['count']} ({g[k]['max_ms']:.1f})" for k in ("gen0", "gen1", "gen2"))
        lines.append(f"| {r['nodes']} | {r['gc']} | {r['mean_candidates']:.0f} | "
                     f"{f['p50_ms']:.2f} / {f['p99_ms']:.2f} | "
                     f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} | {w['p50_ms']:.2f} / {w['p99_ms']:.2f} / "
                     f"{w['max_ms']:.1f} | {collections} |")
    if not results["names"]:
        return "\n".join(lines)
    lines += ["", "Over HTTP at a steady pod rate (client-measured latency per call):", "",
              "| nodes | gc | pods/s | candidates | filter p50 / p99 (ms) | prioritize p50 / p99 (ms) | "
              "extender CPU ms/pod | RSS MiB start -> end | filter p99 1st / 2nd half |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["names"]:
        lines.append(f"| {r['nodes']} | {r['gc']} | {r['achieved_pods_per_s']:.0f} | {r['mean_candidates']:.0f} | "
                     f"{r['filter']['p50_ms']:.2f} / {r['filter']['p99_ms']:.2f} | "
                     f"{r['prioritize']['p50_ms']:.2f} / {r['prioritize']['p99_ms']:.2f} | "
                     f"{r['server_cpu_ms_per_pod']:.2f} | {r['rss_start_mib']:.1f} -> {r['rss_mib']:.1f} | "
                     f"{r['p99_by_half_ms']['filter'][0]:.2f} / {r['p99_by_half_ms']['filter'][1]:.2f} |")
    full = results.get("full")
    if full:
        lines += ["", f"full-Node: {full['nodes']} nodes, request {full['request_mb']:.1f} MB, filter reply "
                      f"{full['filter_reply_mb']:.1f} MB; first call filter {full['first_call_ms']['filter']:.0f} ms; "
                      f"then filter p50 {full['filter']['p50_ms']:.0f} / max {full['filter']['max_ms']:.0f} ms, "
                      f"prioritize p50 {full['prioritize']['p50_ms']:.0f} / max {full['prioritize']['max_ms']:.0f} ms"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

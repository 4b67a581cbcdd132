#!/usr/bin/env bash
# Read-only check of the node agent against a real NVIDIA driver: what NVML and GPM support on this machine, what
# one agent scrape costs, and the inventory annotation the agent would write.
#
#   bash bench/real_gpu_check.sh            # from the repository root, with the project's dependencies installed
#   PYTHON=/path/to/python bash bench/real_gpu_check.sh
#
# It only reads: NVML queries (no nvidia-smi -mig, -pm, -c, -ac or any other setter; GPM streaming is never
# turned on), the agent with --once --dry-run and no cluster, and the agent's own tests, which use the fake
# libnvidia-ml.so.1 they compile (gcc) and never the real one. Every stage has its own time limit; the whole
# script stays under 3 minutes. Paste its output into bench/RESULTS.md.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)

stage() { printf '\n===== %s (%ss into the check)\n' "$1" "$(( $(date +%s) - started ))"; }

stage "machine"
uname -srm
"$PY" --version
"$PY" -c 'import pynvml, importlib.metadata as m; print("nvidia-ml-py", m.version("nvidia-ml-py"))'
if command -v nvidia-smi >/dev/null; then
  timeout 20 nvidia-smi -L
  timeout 20 nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,mig.mode.current,mig.mode.pending,memory.total \
    --format=csv
  timeout 20 nvidia-smi mig -lgi 2>&1 | head -40  # lists GPU instances (read-only)
fi

stage "NVML facts: driver, GPUs, MIG, every field the agent reads, GPM metrics"
timeout 60 "$PY" - <<'EOF'
import time
import pynvml

def name(error):
    return type(error).__name__.removeprefix("NVMLError_")

def attempt(label, call, *args):
    try:
        value = call(*args)
    except pynvml.NVMLError as error:
        print(f"    {label:<34} -- {name(error)}")
        return None
    print(f"    {label:<34} ok  {value!r}"[:160])
    return value

pynvml.nvmlInit()
print("system:")
attempt("nvmlSystemGetDriverVersion", pynvml.nvmlSystemGetDriverVersion)
attempt("nvmlSystemGetNVMLVersion", pynvml.nvmlSystemGetNVMLVersion)
attempt("nvmlSystemGetCudaDriverVersion_v2", pynvml.nvmlSystemGetCudaDriverVersion_v2)
METRICS = {"GRAPHICS_UTIL (GR_ENGINE_ACTIVE)": pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
           "SM_UTIL (SM_ACTIVE)": pynvml.NVML_GPM_METRIC_SM_UTIL,
           "SM_OCCUPANCY": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
           "ANY_TENSOR_UTIL": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
           "DRAM_BW_UTIL": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL}

def gpm(label, take):
    """Two samples 0.5 s apart (this script may wait; the agent never does) and every metric above."""
    try:
        first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    except pynvml.NVMLError as error:
        print(f"    GPM {label}: nvmlGpmSampleAlloc -- {name(error)}")
        return
    try:
        take(first)
        time.sleep(0.5)
        take(second)
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version, request.numMetrics = pynvml.NVML_GPM_METRICS_GET_VERSION, len(METRICS)
        request.sample1, request.sample2 = first, second
        for i, metric in enumerate(METRICS.values()):
            request.metrics[i].metricId = metric
        pynvml.nvmlGpmMetricsGet(request)
        for i, metric in enumerate(METRICS):
            result = request.metrics[i]
            status = "ok" if result.nvmlReturn == 0 else f"error {result.nvmlReturn}"
            print(f"    GPM {label} {metric:<32} {status} {result.value:.2f} %")
    except pynvml.NVMLError as error:
        print(f"    GPM {label}: {name(error)}")
    finally:
        for sample in (first, second):
            pynvml.nvmlGpmSampleFree(sample)

for index in range(pynvml.nvmlDeviceGetCount()):
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        print(f"GPU {index}: {pynvml.nvmlDeviceGetName(handle)}  {pynvml.nvmlDeviceGetUUID(handle)}")
    except pynvml.NVMLError as error:
        print(f"GPU {index}: unreadable ({name(error)})")
        continue
    attempt("nvmlDeviceGetPciInfo_v3 busId", lambda h: pynvml.nvmlDeviceGetPciInfo_v3(h).busId, handle)
    attempt("nvmlDeviceGetMemoryInfo (MiB)", lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20, handle)
    mode = attempt("nvmlDeviceGetMigMode (current, pending)", pynvml.nvmlDeviceGetMigMode, handle)
    attempt("nvmlDeviceGetUtilizationRates", lambda h: pynvml.nvmlDeviceGetUtilizationRates(h).gpu, handle)
    attempt("nvmlDeviceGetTemperature", pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
    attempt("nvmlDeviceGetPowerUsage (mW)", pynvml.nvmlDeviceGetPowerUsage, handle)
    attempt("nvmlDeviceGetEnforcedPowerLimit", pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    attempt("nvmlDeviceGetClockInfo SM", pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
    attempt("nvmlDeviceGetClockInfo MEM", pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM)
    attempt("nvmlDeviceGetTotalEnergyConsumption", pynvml.nvmlDeviceGetTotalEnergyConsumption, handle)
    attempt("nvmlDeviceGetTotalEccErrors", pynvml.nvmlDeviceGetTotalEccErrors, handle,
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)
    attempt("ComputeRunningProcesses_v3 (count)",
            lambda h: len(pynvml.nvmlDeviceGetComputeRunningProcesses_v3(h)), handle)
    support = attempt("nvmlGpmQueryDeviceSupport", lambda h: pynvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice,
                      handle)
    mig = bool(mode and mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE)
    if not mig and support:
        gpm("whole GPU", lambda sample: pynvml.nvmlGpmSampleGet(handle, sample))
    if not mig:
        continue
    for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            device = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            instance = pynvml.nvmlDeviceGetGpuInstanceId(device)
            attributes = pynvml.nvmlDeviceGetAttributes(device)
        except pynvml.NVMLError as error:
            if name(error) != "NotFound":
                print(f"  MIG slot {slot}: {name(error)}")
            continue
        print(f"  MIG {pynvml.nvmlDeviceGetUUID(device)}  GPU instance {instance}, "
              f"{attributes.gpuInstanceSliceCount} slices, {attributes.memorySizeMB} MB")
        attempt("  nvmlDeviceGetMemoryInfo (MiB)", lambda d: pynvml.nvmlDeviceGetMemoryInfo(d).total // 2**20, device)
        if support:
            gpm(f"GPU instance {instance}", lambda sample, i=instance: pynvml.nvmlGpmMigSampleGet(handle, i, sample))
pynvml.nvmlShutdown()
EOF

stage "one agent scrape with the NVML backend (first, then 30 more; GPM measured after 1.1 s)"
timeout 45 "$PY" - <<'EOF'
import statistics, time
from prometheus_client import CollectorRegistry, generate_latest
from node_agent.collector import GpuCollector
from node_agent.metrics import AgentMetrics
from node_agent.nvml import NvmlBackend
from node_agent.podresources import SOCKET, PodResourcesClient

backend = NvmlBackend()
pods = PodResourcesClient(SOCKET)
registry = CollectorRegistry()
registry.register(GpuCollector(backend, hostname="real-gpu-check", metrics=AgentMetrics(registry), pods=pods))

def scrape():
    started, cpu = time.perf_counter(), time.process_time()
    body = generate_latest(registry).decode()
    return body, (time.perf_counter() - started) * 1e3, (time.process_time() - cpu) * 1e3

body, wall, cpu = scrape()
print(f"first scrape: {wall:.2f} ms wall, {cpu:.2f} ms CPU (probes MIG profiles, first GPM samples)")
time.sleep(1.1)
body, wall, cpu = scrape()
print(f"scrape with a GPM measurement: {wall:.2f} ms wall, {cpu:.2f} ms CPU")
times = [scrape()[1:] for _ in range(30)]
print(f"30 more (GPM reused within 1 s): median {statistics.median(t[0] for t in times):.2f} ms wall, "
      f"{statistics.median(t[1] for t in times):.2f} ms CPU")
samples = [line for line in body.splitlines() if line and not line.startswith("#")]
print(f"{len(samples)} samples, {len(body)} bytes; kubelet socket {SOCKET}: "
      f"{'present' if SOCKET.exists() else 'absent'}; {body.count('pod=')} samples with a pod")
for line in samples:
    if line.startswith(("DCGM_FI_PROF_", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "gpuguard_agent_nvml_errors")):
        print("  ", line[:220])
backend.close()
EOF

stage "the inventory annotation the agent would write (--once --dry-run, no cluster)"
timeout 30 "$PY" -m node_agent --backend nvml --once --dry-run --metrics-port 0 --node-name real-gpu-check

stage "the agent process: CPU and memory over 20 s with two scrapes"
timeout 45 "$PY" - <<'EOF'
import os, subprocess, sys, time, urllib.request
from pathlib import Path

port = 19481
agent = subprocess.Popen([sys.executable, "-m", "node_agent", "--backend", "nvml", "--node-name", "real-gpu-check",
                          "--host", "127.0.0.1", "--metrics-port", str(port), "--interval", "15"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
def cpu():
    fields = Path(f"/proc/{agent.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)
    before, started = cpu(), time.monotonic()
    for _ in range(2):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        time.sleep(10)
    used, elapsed = cpu() - before, time.monotonic() - started
    status = dict(line.split(":", 1) for line in Path(f"/proc/{agent.pid}/status").read_text().splitlines())
    print(f"CPU {used / elapsed * 100:.3f} % of one core over {elapsed:.0f} s; VmRSS {status['VmRSS'].strip()}, "
          f"VmHWM {status['VmHWM'].strip()}, RssAnon {status['RssAnon'].strip()}, RssFile {status['RssFile'].strip()}")
finally:
    agent.terminate()
    _, errors = agent.communicate(timeout=10)
    print("agent log:", *errors.strip().splitlines()[-8:], sep="\n  ")
EOF

stage "the agent's NVML, GPM and PodResources tests (fake libnvidia-ml.so.1 built with gcc; the real GPU untouched)"
timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/agent/test_nvml_backend.py tests/agent/test_podresources.py \
  tests/agent/test_attribution.py tests/agent/test_collector.py 2>&1 | tail -5

stage "done"

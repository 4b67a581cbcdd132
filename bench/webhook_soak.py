"""Webhook load and soak: a steady mix of valid, invalid and oversized requests, with the server's memory watched.

    python bench/webhook_soak.py [--seconds 60] [--rate 2000] [--invalid-share 0.125] [--oversized-rate 20]

The webhook runs as `python -m gpuguard webhook` (self-signed TLS, the default policy) pinned to CPU 0; three `wrk`
processes pinned to CPU 1 drive it at fixed rates (wrk's Lua `delay()` spaces each connection's requests, so the
rate is the sum of connections / delay, a little less when replies are slow):
- valid: /mutate of predictor pods (half the same pod again, answered from the memo; half every pod different) and
  /validate of InferenceServices (allowed and denied): every reply must be HTTP 200;
- invalid: cut-off JSON, not JSON, JSON of another shape, a review with a missing field: every reply must be 400;
- oversized: 3 MiB + 1 byte bodies, sent whole: every reply must be 413.
The server's resident memory is sampled every second from /proc: the baseline is taken after a 10-second warm-up
at the same load, so the growth figure is the soak's own. Replies are counted per status by wrk's Lua `response()`;
socket errors (connect, read, write, timeout) are counted separately. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.webhook_bench import wait_ready  # noqa: E402
from gpuguard.web.tls import default_sans, ensure_self_signed  # noqa: E402
from webhook.settings import MAX_BODY_BYTES  # noqa: E402

PREDICTOR = ROOT / "bench" / "data" / "review-predictor-4.6kb.json"
ISVC_OK = ROOT / "tests" / "data" / "review-isvc-sklearn.json"
ISVC_DENIED = ROOT / "tests" / "data" / "review-isvc-fractional-gpu.json"

COUNTING_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
function delay() return %(delay_ms).3f end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
  end
  for status, n in pairs(total) do io.write(string.format("status %%d %%d\\n", status, n)) end
  io.write(string.format("latency_p50_us %%d\\nlatency_p99_us %%d\\nlatency_max_us %%d\\n",
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""

VALID_LUA = """
local predictor = io.open("%(predictor)s"):read("*a")
local isvc_ok = io.open("%(isvc_ok)s"):read("*a")
local isvc_denied = io.open("%(isvc_denied)s"):read("*a")
local counter = 0
local json = {["Content-Type"] = "application/json"}
request = function()
  counter = counter + 1
  local kind = counter %% 4
  if kind == 0 then
    return wrk.format("POST", "/mutate", json, predictor)
  elseif kind == 1 then
    local unique = predictor:gsub('"team":"nlp"', '"team":"nlp-' .. counter .. '"', 1)
    return wrk.format("POST", "/mutate", json, unique)
  elseif kind == 2 then
    return wrk.format("POST", "/validate", json, isvc_ok)
  end
  return wrk.format("POST", "/validate", json, isvc_denied)
end
"""

INVALID_LUA = """
local predictor = io.open("%(predictor)s"):read("*a")
local bodies = {
  predictor:sub(1, 1000),
  "not json at all",
  "[1, 2, 3]",
  '{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x"}}',
  predictor:gsub('"operation":"CREATE"', '"operation":"PATCH"', 1),
}
local counter = 0
request = function()
  counter = counter + 1
  local path = (counter %% 2 == 0) and "/mutate" or "/validate"
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[counter %% #bodies + 1])
end
"""

OVERSIZED_LUA = """
local body = string.rep(" ", %(size)d)
request = function()
  return wrk.format("POST", "/validate", {["Content-Type"] = "application/json"}, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int, command: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *command]
    return command


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class MemoryWatch(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append((time.monotonic(), rss_kib(self.pid)))


def wrk_command(script: Path, port: int, seconds: int, connections: int) -> list[str]:
    return pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
                      "-s", str(script), f"https://127.0.0.1:{port}"])


def parse_wrk(output: str) -> dict[str, Any]:
    statuses = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", output, re.M)}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    found = {name: int(value) for name, value in re.findall(r"^(latency_\w+) (\d+)$", output, re.M)}
    return {
        "statuses": statuses,
        "requests": sum(statuses.values()),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, socket_errors.groups()))) if socket_errors else {},
        "rate": float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": found.get("latency_p50_us", 0) / 1000, "p99_ms": found.get("latency_p99_us", 0) / 1000,
        "max_ms": found.get("latency_max_us", 0) / 1000,
    }


def scripts(workdir: Path, delays_ms: dict[str, float]) -> dict[str, Path]:
    paths = {"predictor": PREDICTOR, "isvc_ok": ISVC_OK, "isvc_denied": ISVC_DENIED, "size": MAX_BODY_BYTES + 1}
    found = {}
    for name, body in (("valid", VALID_LUA), ("invalid", INVALID_LUA), ("oversized", OVERSIZED_LUA)):
        delay = {"delay_ms": max(delays_ms[name], 0.0)}
        script = workdir / f"{name}.lua"
        script.write_text(body % paths + COUNTING_LUA % delay)
        found[name] = script
    return found


def run_mix(port: int, seconds: int, paths: dict[str, Path], connections: dict[str, int]) -> dict[str, Any]:
    processes = {name: subprocess.Popen(wrk_command(path, port, seconds, connections[name]), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True) for name, path in paths.items()}
    outputs = {name: process.communicate()[0] for name, process in processes.items()}
    for name, output in outputs.items():
        if "Requests/sec" not in output or "status " not in output:
            print(f"wrk ({name}) said:\n{output}", file=sys.stderr)
    return {name: parse_wrk(output) for name, output in outputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2000, help="total requests per second")
    parser.add_argument("--invalid-share", type=float, default=0.125)
    parser.add_argument("--oversized-rate", type=float, default=20, help="3 MiB bodies per second")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    rates = {"invalid": args.rate * args.invalid_share, "oversized": args.oversized_rate}
    rates["valid"] = args.rate - rates["invalid"] - rates["oversized"]
    connections = {"valid": 64, "invalid": 8, "oversized": 2}  # many, so a reply's time is small beside the delay
    workdir = Path(tempfile.mkdtemp(prefix="gpuguard-soak-"))
    ensure_self_signed(workdir / "tls", default_sans(None, None))
    delays = {name: connections[name] / rates[name] * 1000 for name in rates}
    port = free_port()
    load_before = os.getloadavg()
    log_file = (workdir / "server.log").open("w")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "gpuguard", "--log-level", "INFO", "webhook", "--host", "127.0.0.1",
                   "--port", str(port), "--self-signed", str(workdir / "tls"), "--metrics-port", "0"]),
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=log_file,
    )
    try:
        wait_ready(port, ssl.create_default_context(cafile=str(workdir / "tls" / "ca.crt")))
        started_kib = rss_kib(server.pid)
        # Warm up at the target rates and calibrate: each connection sends every (delay + reply time), so the
        # reply time seen in the warm-up comes off the delay.
        for _ in range(2):
            warmup = run_mix(port, args.warmup // 2, scripts(workdir, delays), connections)
            for name, result in warmup.items():
                reply_ms = connections[name] / max(result["rate"], 1.0) * 1000 - max(delays[name], 0.0)
                delays[name] = connections[name] / rates[name] * 1000 - reply_ms
        paths = scripts(workdir, delays)
        watch = MemoryWatch(server.pid)
        baseline_kib = rss_kib(server.pid)
        watch.start()
        soak_started, cpu_started = time.monotonic(), cpu_seconds(server.pid)
        results = run_mix(port, args.seconds, paths, connections)
        server_cpu = (cpu_seconds(server.pid) - cpu_started) / (time.monotonic() - soak_started) * 100
        load_during = os.getloadavg()
        watch.stop.set()
        watch.join()
        final_kib = rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log_file.close()
        log = (workdir / "server.log").read_text()
        shutil.rmtree(workdir, ignore_errors=True)
    peak_kib = max(kib for _, kib in watch.samples)
    half = [kib for t, kib in watch.samples if t - soak_started >= args.seconds / 2]
    log_lines = [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line or "Traceback" in line]
    expected = {"valid": 200, "invalid": 400, "oversized": 413}
    print(f"load average before {load_before[0]:.2f}, during {load_during[0]:.2f} (2 CPUs; server on CPU 0, wrk on 1)")
    print(f"{'mix':<10} {'target/s':>9} {'got/s':>8} {'requests':>9} {'expected':>9} {'other statuses':<22} "
          f"{'socket errors':<14} {'p50 ms':>7} {'p99 ms':>7}")
    for name, result in results.items():
        wrong = {s: n for s, n in result["statuses"].items() if s != expected[name]}
        errors = sum(result["socket_errors"].values())
        print(f"{name:<10} {rates[name]:>9.0f} {result['rate']:>8.0f} {result['requests']:>9} "
              f"{result['statuses'].get(expected[name], 0):>9} {json.dumps(wrong):<22} {errors:<14} "
              f"{result['p50_ms']:>7.2f} {result['p99_ms']:>7.2f}")
    growth = (final_kib - baseline_kib) / baseline_kib * 100
    print(f"resident memory: {started_kib / 1024:.1f} MiB at start, {baseline_kib / 1024:.1f} MiB after warm-up, "
          f"peak {peak_kib / 1024:.1f} MiB, {final_kib / 1024:.1f} MiB at the end: growth {growth:+.1f} % "
          f"(second half: {min(half) / 1024:.1f}..{max(half) / 1024:.1f} MiB)")
    trace = [round(kib / 1024, 1) for _, kib in watch.samples[9::10]]
    print(f"resident memory every 10 s (MiB): {trace}")
    print(f"server CPU during the soak: {server_cpu:.0f} % of one core")
    print(f"server log lines at WARNING or above: {len(log_lines)}")
    for line in log_lines[:10]:
        print("  " + line)
    print(json.dumps({"results": results, "rates": rates, "rss_kib": {"start": started_kib, "baseline": baseline_kib,
                                                                      "peak": peak_kib, "final": final_kib},
                      "growth_percent": growth, "server_cpu_percent": server_cpu, "load_before": load_before, "load_during": load_during,
                      "warning_lines": len(log_lines)}))


if __name__ == "__main__":
    main()

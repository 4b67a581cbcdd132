"""Webhook benchmark: the pure decision, /mutate throughput against a no-op TLS server, and p99 at a steady rate.

    python bench/webhook_bench.py [--seconds 10] [--rate 1000] [--steady-seconds 20]

Three measurements on the realistic 4.6 KB predictor AdmissionReview in bench/data:
1. the pure decision (`webhook.review.mutate`) and the whole request path without HTTP (parse + decide + encode),
   against `jsonpatch.make_patch` on the whole pod, the approach the patch builder avoids;
2. throughput of `/mutate` over TLS with keep-alive, and of a no-op aiohttp TLS server answering the same request
   with a fixed reply, both driven by the same `wrk` in the same run (server pinned to CPU 0, wrk to CPU 1);
3. latency at a steady request rate, also driven by wrk (each connection pauses between requests so that together
   they send the asked rate; wrk records every request's latency), with the error count.
Throughput is measured twice for /mutate: the same pod repeated (a ReplicaSet scaling up; answered from the
memo in webhook/memo.py) and every pod different (each one parsed and decided). The steady-rate run uses
different pods throughout.
Timings vary with the machine's load: compare the ratios, which are taken within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import jsonpatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpuguard.contracts.admission import decode_patch, encode_reply, parse_review  # noqa: E402
from gpuguard.policy.loading import default_policy  # noqa: E402
from webhook.review import mutate  # noqa: E402

PAYLOAD = ROOT / "bench" / "data" / "review-predictor-4.6kb.json"
NOOP_SERVER = ROOT / "bench" / "noop_tls_server.py"


def measure_decision() -> dict[str, float]:
    body = PAYLOAD.read_bytes()
    policy = default_policy()
    request = parse_review(body).request

    def pure() -> None:
        mutate(request, policy)

    def whole_path() -> None:
        review = parse_review(body)
        encode_reply(review.api_version, mutate(review.request, policy).response)

    original = request.object
    assert original is not None
    mutated = jsonpatch.apply_patch(copy.deepcopy(original), decode_patch(mutate(request, policy).response))

    def full_diff() -> None:
        jsonpatch.make_patch(original, mutated)

    return {
        "decision_median_us": _median_us(pure),
        "parse_decide_encode_median_us": _median_us(whole_path),
        "make_patch_whole_pod_median_us": _median_us(full_diff),
        "payload_bytes": float(len(body)),
    }


def _median_us(func: object, *, number: int = 200, repeat: int = 25) -> float:
    times = timeit.repeat(func, number=number, repeat=repeat)  # type: ignore[arg-type]
    return statistics.median(times) / number * 1e6


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else command  # type: ignore[operator]


def wait_ready(port: int, context: ssl.SSLContext, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname="localhost"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not come up")


def start_server(kind: str, port: int, tls_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if kind == "webhook":
        command = [sys.executable, "-m", "gpuguard", "--log-level", "WARNING", "webhook", "--host", "127.0.0.1",
                   "--port", str(port), "--self-signed", str(tls_dir), "--metrics-port", "0"]
    else:
        command = [sys.executable, str(NOOP_SERVER), str(port), str(tls_dir / "tls.crt"), str(tls_dir / "tls.key")]
    return subprocess.Popen(_pinned(0, command), env=env, cwd=ROOT)


REPEATED_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{payload}"):read("*a")
"""

# Every request a different pod (a label value carries a counter): the memo never helps, every pod is decided.
UNIQUE_LUA = """
local body = io.open("{payload}"):read("*a")
local counter = 0
request = function()
  counter = counter + 1
  local unique = body:gsub('"team":"nlp"', '"team":"nlp-' .. counter .. '"', 1)
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, unique)
end
"""


# A steady rate from wrk: each of the C connections waits C/rate seconds between requests, so together they send
# `rate` requests a second; wrk records each request's own latency. Every pod is different here too.
STEADY_LUA = UNIQUE_LUA + """
delay = function()
  return {delay_ms}
end
"""


def wrk(port: int, seconds: int, workdir: Path, *, unique: bool = False, connections: int = 32,
        rate: int | None = None) -> dict[str, float]:
    script = workdir / ("steady.lua" if rate else "unique.lua" if unique else "post.lua")
    if rate:
        # A request's own latency (about 2 ms) adds to the pause, so pause that much less: the run reports the rate
        # it actually achieved.
        script.write_text(STEADY_LUA.format(payload=PAYLOAD, delay_ms=max(1, connections * 1000 // rate - 2)))
    else:
        script.write_text((UNIQUE_LUA if unique else REPEATED_LUA).format(payload=PAYLOAD))
    command = _pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                          f"https://127.0.0.1:{port}/mutate"])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    result = {"req_per_s": rate, "non_2xx": float(errors.group(1)) if errors else 0.0,
              "socket_errors": 0.0 if socket_errors is None else 1.0}
    for percentile in ("50", "99"):
        found = re.search(rf"^\s+{percentile}%\s+([0-9.]+)(us|ms|s)\s*$", output, re.M)
        if found:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[found.group(2)]
            result[f"p{percentile}_ms"] = float(found.group(1)) * scale
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="wrk run length per server")
    parser.add_argument("--rate", type=int, default=1000, help="steady request rate (req/s)")
    parser.add_argument("--steady-seconds", type=int, default=20)
    args = parser.parse_args()

    decision = measure_decision()
    print(f"payload: {decision['payload_bytes']:.0f} bytes (bench/data/{PAYLOAD.name})")
    print(f"pure decision (mutate), median:            {decision['decision_median_us']:8.1f} us")
    print(f"parse + decide + encode, median:           {decision['parse_decide_encode_median_us']:8.1f} us")
    print(f"jsonpatch.make_patch on the whole pod:     {decision['make_patch_whole_pod_median_us']:8.1f} us")

    workdir = Path(tempfile.mkdtemp(prefix="gpuguard-bench-"))
    tls_dir = workdir / "tls"
    results: dict[str, dict[str, float]] = {}
    for kind in ("noop", "webhook"):
        port = _free_port()
        if kind == "noop":
            from gpuguard.web.tls import default_sans, ensure_self_signed

            ensure_self_signed(tls_dir, default_sans(None, None))
        server = start_server(kind, port, tls_dir)
        try:
            wait_ready(port, ssl.create_default_context(cafile=str(tls_dir / "ca.crt")))
            wrk(port, 2, workdir)  # warm-up
            results[kind] = wrk(port, args.seconds, workdir)
            if kind == "webhook":
                results["webhook_unique"] = wrk(port, args.seconds, workdir, unique=True)
                results["steady"] = wrk(port, args.steady_seconds, workdir, connections=12, rate=args.rate)
        finally:
            server.terminate()
            server.wait(timeout=10)
    ratio = results["webhook"]["req_per_s"] / results["noop"]["req_per_s"]
    ratio_unique = results["webhook_unique"]["req_per_s"] / results["noop"]["req_per_s"]
    print(f"no-op aiohttp TLS server:                  {results['noop']['req_per_s']:8.0f} req/s")
    print(f"gpuguard /mutate, the same pod repeated:   {results['webhook']['req_per_s']:8.0f} req/s "
          f"(non-2xx: {results['webhook']['non_2xx']:.0f}), ratio {ratio:.2f}  (target >= 0.5)")
    print(f"gpuguard /mutate, every pod different:     {results['webhook_unique']['req_per_s']:8.0f} req/s "
          f"(non-2xx: {results['webhook_unique']['non_2xx']:.0f}), ratio {ratio_unique:.2f}")
    steady_result = results["steady"]
    print(f"steady {steady_result['req_per_s']:.0f} req/s (asked {args.rate}) for {args.steady_seconds} s, every pod "
          f"different: p50 {steady_result['p50_ms']:.2f} ms, p99 {steady_result['p99_ms']:.2f} ms, "
          f"non-2xx {steady_result['non_2xx']:.0f}  (target p99 <= 5 ms, 0 errors)")
    print(json.dumps({"decision": decision, **results, "ratio": ratio, "ratio_unique": ratio_unique}))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

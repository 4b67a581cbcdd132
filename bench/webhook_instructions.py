"""Instructions per /mutate request, counted by callgrind: a figure that does not move with the machine's load.

    python bench/webhook_instructions.py [--requests 500]

Each server (the no-op aiohttp TLS server, and `gpuguard webhook`) runs under `valgrind --tool=callgrind` twice:
once answering 1 request and once answering 1 + N, over one keep-alive TLS connection; the difference divided by N
is what one request costs the server, startup excluded. The webhook is measured with the same pod repeated (the
memo answers) and with every pod different (each one parsed and decided). Timings on a shared 2-core machine vary
with whatever else runs; instruction counts do not, so the ratio here is the steadier reading of the throughput
target (wall-clock throughput is in webhook_bench.py). The pure decision (`webhook.review.mutate` on the parsed
payload, no HTTP) is counted the same way, N decisions minus one, in a process of its own.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpuguard.web.tls import default_sans, ensure_self_signed  # noqa: E402

PAYLOAD = ROOT / "bench" / "data" / "review-predictor-4.6kb.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send(port: int, count: int, *, unique: bool) -> None:
    body = PAYLOAD.read_bytes()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + 120  # valgrind makes startup slow
    while True:
        try:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
            connection.connect()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for index in range(count):
        data = body.replace(b'"team":"nlp"', b'"team":"nlp-%d"' % index, 1) if unique else body
        connection.request("POST", "/mutate", body=data, headers={"Content-Type": "application/json"})
        reply = connection.getresponse()
        reply.read()
        assert reply.status == 200, reply.status
    connection.close()


def count(server: str, requests: int, tls: Path, *, unique: bool) -> int:
    port = free_port()
    if server == "noop":
        command = [sys.executable, str(ROOT / "bench" / "noop_tls_server.py"), str(port), str(tls / "tls.crt"),
                   str(tls / "tls.key")]
    else:
        command = [sys.executable, "-m", "gpuguard", "--log-level", "WARNING", "webhook", "--host", "127.0.0.1",
                   "--port", str(port), "--self-signed", str(tls), "--metrics-port", "0"]
    log = tls.parent / f"callgrind-{server}-{requests}-{unique}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            send(port, requests, unique=unique)
        finally:
            process.send_signal(2)
            process.wait(timeout=300)
    found = re.search(r"Collected : (\d+)", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found.group(1))


def per_request(server: str, requests: int, tls: Path, *, unique: bool = False) -> float:
    return (count(server, 1 + requests, tls, unique=unique) - count(server, 1, tls, unique=unique)) / requests


def decide(times: int) -> None:
    """Run the pure decision `times` times on the payload (what `per_decision` counts under callgrind)."""
    from gpuguard.contracts.admission import parse_review
    from gpuguard.policy.loading import default_policy
    from webhook.review import mutate

    policy = default_policy()
    request = parse_review(PAYLOAD.read_bytes()).request
    for _ in range(times):
        mutate(request, policy)


def decision_count(times: int, log: Path) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
               "--decide", str(times)]
    with open(log, "w") as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    found = re.search(r"Collected : (\d+)", log.read_text())
    assert found, log.read_text()[-2000:]
    return int(found.group(1))


def per_decision(times: int, scratch: Path) -> float:
    """Instructions of one pure decision (`webhook.review.mutate` on the parsed payload), startup excluded."""
    return (decision_count(1 + times, scratch / "decide-n.log") - decision_count(1, scratch / "decide-1.log")) / times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--decide", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.decide:
        decide(args.decide)
        return
    tls = Path(tempfile.mkdtemp(prefix="gpuguard-icount-")) / "tls"
    ensure_self_signed(tls, default_sans(None, None))
    noop = per_request("noop", args.requests, tls)
    repeated = per_request("webhook", args.requests, tls)
    unique = per_request("webhook", args.requests, tls, unique=True)
    print(f"instructions per request, {args.requests} requests over one keep-alive TLS connection:")
    print(f"  no-op aiohttp TLS server:               {noop / 1e3:8.0f} k")
    print(f"  gpuguard /mutate, same pod repeated:    {repeated / 1e3:8.0f} k   no-op/webhook = {noop / repeated:.2f}")
    print(f"  gpuguard /mutate, every pod different:  {unique / 1e3:8.0f} k   no-op/webhook = {noop / unique:.2f}")
    decision = per_decision(args.requests, tls.parent)
    print(f"  the pure decision alone (webhook.review.mutate):  {decision / 1e3:8.0f} k")


if __name__ == "__main__":
    main()

"""Every endpoint of the webhook and of the agent's HTTP server bounds what a client can make it read or hold.

The webhook: AdmissionReview bodies up to 3 MiB (413 beyond, refused on the declared size before reading, and a
compressed body is counted after decompression); the probes and /metrics read no body; request lines and headers
are bounded by aiohttp (400). The agent: no body is ever read, request line and headers bounded (414, 431) and
refused in JSON that quotes nothing of the request, a silent connection is dropped after the idle timeout and a
trickling one at the request deadline, so neither can hold a thread, and connections over its bound are closed as
they arrive.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from gpuguard.web import serving
from node_agent.serving import HttpServer, create_http_app
from tests.conftest import review_body
from tests.hardening import wire
from tests.hardening.inprocess import InProcessServer
from webhook.settings import MAX_BODY_BYTES


def exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float = 20) -> bytes:
    """Send a raw request, return the status line (or b"" if the server closed without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head + body)
        reply = connection.recv(4096)
    return reply.split(b"\r\n", 1)[0]


def post_head(path: str, length: int, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: webhook", "Content-Type: application/json",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def webhook() -> Iterator[InProcessServer]:
    with InProcessServer() as server:
        yield server


@pytest.fixture(scope="module")
def metrics_port() -> Iterator[int]:
    """The webhook's separate plain-HTTP metrics app."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = serving.metrics_app(CollectorRegistry())
    runners = asyncio.run_coroutine_threadsafe(serving.start([serving.Listener(app, "127.0.0.1", 0)]), loop).result()
    async def stop() -> None:
        await runners[0].cleanup()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    try:
        yield int(runners[0].addresses[0][1])
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_an_admission_body_declared_over_3_mib_is_refused_before_it_is_sent(webhook: InProcessServer,
                                                                            path: str) -> None:
    assert exchange(webhook.port, post_head(path, MAX_BODY_BYTES + 1)) == b"HTTP/1.1 413 Request Entity Too Large"


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_a_chunked_body_growing_over_3_mib_is_refused(webhook: InProcessServer, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: webhook\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n").encode()
    chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b" " * 1024 * 1024)
    assert exchange(webhook.port, head, chunk * 4 + b"0\r\n\r\n") == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_compressed_body_is_limited_by_its_decompressed_size(webhook: InProcessServer) -> None:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 MiB of JSON whitespace in about 64 KiB
    head = post_head("/validate", len(bomb), "Content-Encoding: gzip")
    assert exchange(webhook.port, head, bomb) == b"HTTP/1.1 413 Request Entity Too Large"


def test_a_body_of_exactly_the_limit_is_read(webhook: InProcessServer) -> None:
    body = review_body("review-knative-sklearn.json")
    padded = body + b" " * (MAX_BODY_BYTES - len(body))
    assert exchange(webhook.port, post_head("/validate", len(padded)), padded) == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_answer_without_reading_a_body(webhook: InProcessServer, path: str) -> None:
    head = f"GET {path} HTTP/1.1\r\nHost: webhook\r\nContent-Length: {10**9}\r\n\r\n".encode()
    assert exchange(webhook.port, head, b"x" * 1000) == b"HTTP/1.1 200 OK"


def test_the_metrics_port_answers_without_reading_a_body_and_refuses_bodies_it_would_read(metrics_port: int) -> None:
    head = f"GET /metrics HTTP/1.1\r\nHost: webhook\r\nContent-Length: {10**9}\r\n\r\n".encode()
    assert exchange(metrics_port, head) == b"HTTP/1.1 200 OK"
    assert exchange(metrics_port, post_head("/metrics", 10**9)) == b"HTTP/1.1 405 Method Not Allowed"


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: webhook\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\nHost: webhook\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n", b"400"),
], ids=["request-line", "header-value", "header-count"])
def test_oversized_request_lines_and_headers_are_refused_on_both_webhook_ports(
    webhook: InProcessServer, metrics_port: int, head: bytes, status: bytes
) -> None:
    for port in (webhook.port, metrics_port):
        assert exchange(port, head).split(b" ")[1] == status
    assert exchange(webhook.port, b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n") == b"HTTP/1.1 200 OK"


@pytest.fixture
def agent_port() -> Iterator[int]:
    server = HttpServer(create_http_app(CollectorRegistry(), ready=lambda: True), host="127.0.0.1", port=0,
                        idle_timeout=0.5)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(101)) + b"\r\n", b"431"),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n", b"200"),
], ids=["request-line", "header-count", "header-line", "unread-body"])
def test_the_agent_bounds_request_lines_and_headers_and_never_reads_a_body(
    agent_port: int, head: bytes, status: bytes
) -> None:
    assert exchange(agent_port, head).split(b" ")[1] == status
    assert exchange(agent_port, b"GET /healthz HTTP/1.1\r\n\r\n").split(b" ")[1] == b"200"


@pytest.mark.parametrize("raw", [
    b"GET /s3cr3t-Mark3r" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nX-Key: s3cr3t-Mark3r" + b"a" * 70_000 + b"\r\n\r\n",
    b"S3CR3T-MARK3R /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics s3cr3t-Mark3r/1.1\r\n\r\n",
], ids=["request-line", "header", "method", "version"])
def test_the_agents_refusals_are_json_that_quotes_nothing_of_the_request(agent_port: int, raw: bytes) -> None:
    reply = wire.exchange(agent_port, raw)
    assert reply.status >= 400 and reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"error"}
    assert "s3cr3t" not in (json.dumps(reply.headers) + reply.body.decode()).lower().replace("-", "")


@pytest.fixture
def strict_agent() -> Iterator[int]:
    server = HttpServer(create_http_app(CollectorRegistry(), ready=lambda: True), host="127.0.0.1", port=0,
                        idle_timeout=0.5, request_deadline=1.5, max_connections=2)
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def test_the_agent_closes_a_request_trickling_in_at_its_deadline(strict_agent: int) -> None:
    """A byte every 0.2 s never trips the 0.5 s idle timeout; the 1.5 s deadline for the whole request ends it."""
    with socket.create_connection(("127.0.0.1", strict_agent), timeout=20) as connection:
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 200:
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 10:
                break
        if not closed:
            connection.settimeout(5)
            try:
                closed = connection.recv(1024) == b""
            except ConnectionResetError:
                closed = True
        assert closed and time.monotonic() - started < 6


def test_the_agent_closes_connections_over_its_bound_as_they_arrive(strict_agent: int) -> None:
    held = [socket.create_connection(("127.0.0.1", strict_agent), timeout=20) for _ in range(2)]
    try:
        time.sleep(0.1)  # both accepted, each holding a thread
        with socket.create_connection(("127.0.0.1", strict_agent), timeout=20) as third:
            started = time.monotonic()
            third.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            try:
                assert third.recv(1024) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < 0.4, "closed at once, not by the 0.5 s idle timeout"
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    assert exchange(strict_agent, b"GET /healthz HTTP/1.1\r\n\r\n").split(b" ")[1] == b"200"


def test_the_agent_drops_a_connection_that_sends_nothing(agent_port: int) -> None:
    with socket.create_connection(("127.0.0.1", agent_port), timeout=30) as connection:
        started = time.monotonic()
        assert connection.recv(1024) == b"", "the server closed the silent connection"
        assert time.monotonic() - started < 25  # closed by the agent's 0.5 s idle timeout, not this socket's
    assert exchange(agent_port, b"GET /healthz HTTP/1.1\r\n\r\n").split(b" ")[1] == b"200"


def test_kinds_a_client_invents_do_not_grow_the_metric_label_set(webhook: InProcessServer) -> None:
    review = json.loads(review_body("review-knative-sklearn.json"))
    for index in range(20):
        review["request"]["kind"]["kind"] = f"Invented{index}"
        body = json.dumps(review).encode()
        assert exchange(webhook.port, post_head("/validate", len(body)), body) == b"HTTP/1.1 200 OK"
    kinds = {sample.labels["kind"] for metric in webhook.registry.collect() for sample in metric.samples
             if sample.name == "gpuguard_webhook_admissions_total"}
    assert "other" in kinds and not any(kind.startswith("Invented") for kind in kinds)

"""No connection is held past its timeout, and no listener holds more connections than its limit.

Each way a client can hold a connection without finishing a request is tried against the real apps (the webhook
over TLS, the extender over plain HTTP) with short limits: no TLS handshake at all, nothing after the handshake,
headers a byte at a time, a body that stops, an idle keep-alive connection, a large reply the client never reads,
and more connections than allowed. The server must close each one itself (the client's own socket timeout is far
longer than the limit), count it, and keep answering everyone else.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuguard.web.limits import ConnectionLimits
from gpuguard.web.tls import ReloadingCertificate, default_sans, ensure_self_signed
from tests.conftest import review_body
from tests.extender.conftest import cluster_node, payload
from tests.hardening.inprocess import InProcessExtender, InProcessServer, ServedApp
from tests.hardening.wire import closed_by_server, connect, exchange, head, post, read_reply

LIMITS = ConnectionLimits(tls_handshake_timeout=0.5, header_timeout=0.5, body_timeout=0.5, idle_timeout=0.8,
                          max_connections=6)
CLIENT_TIMEOUT = 15.0
"""How long a test waits for the server to close: far beyond every limit above, far below the defaults."""
REVIEW = review_body("review-knative-sklearn.json")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReloadingCertificate, ssl.SSLContext]:
    files = ensure_self_signed(tmp_path_factory.mktemp("tls"), default_sans(None, None))
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    return ReloadingCertificate(files.cert, files.key), context


@pytest.fixture
def webhook(tls: tuple[ReloadingCertificate, ssl.SSLContext]) -> Iterator[InProcessServer]:
    with InProcessServer(certificate=tls[0], connections=LIMITS) as server:
        yield server


@pytest.fixture
def extender(tmp_path: Path) -> Iterator[InProcessExtender]:
    with InProcessExtender(tmp_path, connections=LIMITS) as served:
        yield served


def timed_out(served: ServedApp, phase: str, listener: str = "http") -> float:
    value = served.connection_registry.get_sample_value(
        "gpuguard_http_connections_timed_out_total", {"listener": listener, "phase": phase})
    return value or 0.0


def assert_closed_by_server(connection: socket.socket) -> None:
    connection.settimeout(CLIENT_TIMEOUT)
    started = time.monotonic()
    assert closed_by_server(connection)
    assert time.monotonic() - started < CLIENT_TIMEOUT - 1, "the server closed it, not the client's timeout"


def healthz(port: int, context: ssl.SSLContext | None = None) -> int:
    return exchange(port, head("GET", "/healthz", "Connection: close"), context=context).status


def test_a_connection_that_never_starts_its_tls_handshake_is_closed(
    webhook: InProcessServer, tls: tuple[ReloadingCertificate, ssl.SSLContext]
) -> None:
    with socket.create_connection(("127.0.0.1", webhook.port)) as silent:
        assert_closed_by_server(silent)
    assert healthz(webhook.port, tls[1]) == 200


def test_a_connection_silent_after_its_tls_handshake_is_closed(
    webhook: InProcessServer, tls: tuple[ReloadingCertificate, ssl.SSLContext]
) -> None:
    with connect(webhook.port, context=tls[1]) as silent:
        assert_closed_by_server(silent)
    assert timed_out(webhook, "header") >= 1


@pytest.mark.parametrize("service", ["webhook", "extender"])
def test_headers_sent_a_byte_at_a_time_do_not_keep_a_connection(
    request: pytest.FixtureRequest, tls: tuple[ReloadingCertificate, ssl.SSLContext], service: str
) -> None:
    served: ServedApp = request.getfixturevalue(service)
    context = tls[1] if service == "webhook" else None
    with connect(served.port, context=context, timeout=CLIENT_TIMEOUT) as trickling:
        trickling.sendall(b"POST /filter HTTP/1.1\r\nHost: gpuguard\r\nX-Slow: ")
        started = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - started < CLIENT_TIMEOUT:
                trickling.sendall(b"a")
                time.sleep(0.05)
                if closed_soon(trickling):
                    raise ConnectionResetError("closed by the server")
    assert timed_out(served, "header") >= 1
    assert healthz(served.port, context) == 200


def closed_soon(connection: socket.socket) -> bool:
    connection.setblocking(False)
    try:
        return connection.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True
    finally:
        connection.setblocking(True)


@pytest.mark.parametrize("service", ["webhook", "extender"])
def test_a_body_that_stops_half_way_gets_its_answer_and_the_connection_ends(
    request: pytest.FixtureRequest, tls: tuple[ReloadingCertificate, ssl.SSLContext], service: str
) -> None:
    served: ServedApp = request.getfixturevalue(service)
    context = tls[1] if service == "webhook" else None
    path = "/validate" if service == "webhook" else "/prioritize"
    with connect(served.port, context=context, timeout=CLIENT_TIMEOUT) as stalled:
        stalled.sendall(head("POST", path, length=len(REVIEW)) + REVIEW[:200])
        assert read_reply(stalled).status == 408
        assert_closed_by_server(stalled)


@pytest.mark.parametrize("service", ["webhook", "extender"])
def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    request: pytest.FixtureRequest, tls: tuple[ReloadingCertificate, ssl.SSLContext], service: str
) -> None:
    served: ServedApp = request.getfixturevalue(service)
    context = tls[1] if service == "webhook" else None
    with connect(served.port, context=context) as idle:
        idle.sendall(head("GET", "/healthz"))
        assert read_reply(idle).status == 200
        assert_closed_by_server(idle)


def test_a_reply_the_client_never_reads_does_not_hold_the_connection(extender: InProcessExtender) -> None:
    """A full-Node filter reply carries the Nodes back: megabytes a client may simply not read."""
    node = cluster_node("gpu-a100-0")
    node["metadata"]["annotations"]["padding"] = "x" * (4 * 1024 * 1024)
    body = json.loads(payload("nodes"))
    body["Nodes"]["items"] = [node] * 5
    raw = json.dumps(body).encode()
    with connect(extender.port, timeout=CLIENT_TIMEOUT) as not_reading:
        not_reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        not_reading.sendall(head("POST", "/filter", length=len(raw)) + raw)
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while not timed_out(extender, "send") and time.monotonic() < deadline:
            time.sleep(0.1)
    assert timed_out(extender, "send") == 1
    assert healthz(extender.port) == 200


def test_connections_over_the_limit_are_closed_at_once_before_any_tls(
    webhook: InProcessServer, tls: tuple[ReloadingCertificate, ssl.SSLContext]
) -> None:
    held = [socket.create_connection(("127.0.0.1", webhook.port)) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", webhook.port), timeout=CLIENT_TIMEOUT) as extra:
            started = time.monotonic()
            assert closed_by_server(extra)
            assert time.monotonic() - started < LIMITS.tls_handshake_timeout, "refused at accept, not timed out"
        refused = webhook.connection_registry.get_sample_value("gpuguard_http_connections_refused_total",
                                                               {"listener": "http"})
        assert refused and refused >= 1
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while time.monotonic() < deadline:  # the held ones are gone: new connections are served again
        try:
            if healthz(webhook.port, tls[1]) == 200:
                break
        except (ConnectionError, ssl.SSLError):
            time.sleep(0.1)
    assert healthz(webhook.port, tls[1]) == 200


def test_slow_clients_within_the_limit_leave_healthz_answering(
    webhook: InProcessServer, tls: tuple[ReloadingCertificate, ssl.SSLContext]
) -> None:
    slow = [connect(webhook.port, context=tls[1]) for _ in range(LIMITS.max_connections - 2)]
    try:
        for connection in slow:
            connection.sendall(b"POST /validate HTTP/1.1\r\nHost: gpuguard\r\n")
        assert healthz(webhook.port, tls[1]) == 200
        for connection in slow:
            assert_closed_by_server(connection)
    finally:
        for connection in slow:
            connection.close()
    assert webhook.connection_registry.get_sample_value("gpuguard_http_connections_open", {"listener": "http"}) == 0


def test_the_extender_answers_after_its_connections_were_all_refused(extender: InProcessExtender) -> None:
    held = [socket.create_connection(("127.0.0.1", extender.port)) for _ in range(LIMITS.max_connections + 3)]
    for connection in held:
        connection.close()
    time.sleep(0.2)
    assert exchange(extender.port, post("/filter", payload("names"))).json()["Error"] == ""

"""The agent's plain-HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, served from a background thread.

The other services use aiohttp; the agent deliberately does not. It runs on every GPU node with a 60 MB memory
budget, and aiohttp and the Kubernetes client together already cost about 64 MB. Three GET endpoints need no event
loop: the standard library's threaded WSGI server serves them in a few hundred kB. `/metrics` is prometheus_client's
text exposition through `CachedExposition` (families unchanged since the last scrape are not rendered again), gzip
when asked for (prometheus_client's `name[]` filter is not offered: Prometheus never sends it); other methods than GET
get a 405 in fixed words (see the limits below).

Limits, since every connection holds a thread: at most `MAX_CONNECTIONS` at once (more are closed as soon as they
are accepted); a client that sends nothing for `IDLE_TIMEOUT` seconds is disconnected, and one that has not sent
its whole request `REQUEST_DEADLINE` seconds after connecting is too (a byte every few seconds does not keep it
open); the request line is at most 64 KiB (414 beyond) and the headers at most 100 lines of 64 KiB (431 beyond), the
standard library's own limits; no endpoint reads a request body, and only GET is served (405 otherwise).
Refusals are answered with a JSON error in fixed words (the standard library's HTML page, prometheus_client's 405
and a 404 naming the path would quote the request); errors are logged by type only.
"""

from __future__ import annotations

import gzip
import http
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from node_agent.exposition import CachedExposition

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay silent while its request is read: Prometheus and the kubelet send at once."""
REQUEST_DEADLINE = 20.0
"""Seconds from accepting a connection to having read its whole request: twice Prometheus' default scrape timeout."""
MAX_CONNECTIONS = 32
"""Connections (threads) at once: Prometheus and the kubelet's probes need a few."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    """A slow scraper must not hold up shutdown."""
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: closed at once, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        """One line, the exception's type only (the standard server prints a traceback to stderr)."""
        log.error("metrics request from %s failed: %s", client_address, type(sys.exc_info()[1]).__name__)


class _DeadlineReader(io.RawIOBase):
    """Reads from the socket with each wait bounded by the idle timeout and all of them by the request deadline."""

    def __init__(self, connection: socket.socket, *, idle: float, deadline: float) -> None:
        self._connection, self._idle, self._deadline = connection, idle, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._connection.settimeout(min(self._idle, left))
        return self._connection.recv_into(buffer)


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT
    request_deadline = REQUEST_DEADLINE

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.request_deadline
        self.rfile.close()  # the standard reader, replaced by one that keeps the deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, idle=self.timeout, deadline=deadline))

    def log_message(self, format: str, *args: object) -> None:
        """No access log: Prometheus and kubelet probes call every few seconds."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The refusal as JSON with the status's own phrase: `message` may quote the request line."""
        if self.request_version == "HTTP/0.9":  # refused before its version was read: answer with a status line
            self.request_version = "HTTP/1.0"
        phrase = http.HTTPStatus(code).phrase
        body = json.dumps({"error": f"{phrase}: the request line or headers are not acceptable"}).encode()
        self.close_connection = True
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # a client that stalled or went away: drop it quietly, free the thread


def create_http_app(registry: CollectorRegistry, *, ready: Callable[[], bool]) -> WSGIApplication:
    exposition = CachedExposition(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET":
            return _json(start_response, "405 Method Not Allowed", {"error": "only GET is served"},
                         ("Allow", "GET"))
        if path == "/metrics":
            return _metrics(exposition, environ, start_response)
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            if ready():
                return _json(start_response, "200 OK", {"status": "ready"})
            return _json(start_response, "503 Service Unavailable", {"status": "not ready"})
        return _json(start_response, "404 Not Found", {"error": "no such endpoint; try /metrics, /healthz or /readyz"})

    return app


def _metrics(exposition: CachedExposition, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """Always the Prometheus text format, as dcgm-exporter serves: rendering OpenMetrics (which Prometheus prefers
    when offered) costs 1.6 times as much CPU per scrape. Compression is still negotiated."""
    body = exposition.render()
    headers = [("Content-Type", choose_encoder("text/plain")[1])]
    if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    start_response("200 OK", headers)
    return [body]


def _json(start_response: StartResponse, status: str, body: dict[str, str], *headers: tuple[str, str]) -> list[bytes]:
    """A JSON answer; refusals are fixed words, never the request's path or method."""
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


class HttpServer:
    """Serves a WSGI app on a daemon thread until `stop()`."""

    def __init__(self, app: WSGIApplication, *, host: str, port: int, idle_timeout: float = IDLE_TIMEOUT,
                 request_deadline: float = REQUEST_DEADLINE, max_connections: int = MAX_CONNECTIONS) -> None:
        handler = type("Handler", (_QuietHandler,), {"timeout": idle_timeout, "request_deadline": request_deadline})
        self._server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=handler)
        self._server.slots = threading.BoundedSemaphore(max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

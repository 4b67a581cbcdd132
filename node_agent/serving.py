"""The agent's plain-HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, served from a background thread.

The other services use aiohttp; the agent deliberately does not. It runs on every GPU node with a 60 MB memory
budget, and aiohttp and the Kubernetes client together already cost about 64 MB. Three GET endpoints need no event
loop: the standard library's threaded WSGI server serves them in a few hundred kB. `/metrics` is prometheus_client's
text exposition through `CachedExposition` (families unchanged since the last scrape are not rendered again), gzip
when asked for (prometheus_client's `name[]` filter is not offered: Prometheus never sends it); other methods than GET
get prometheus_client's WSGI app's answers (OPTIONS, 405).

Limits, since every connection holds a thread: a client that sends nothing for `IDLE_TIMEOUT` seconds is
disconnected; the request line is at most 64 KiB (414 beyond) and the headers at most 100 lines of 64 KiB (431
beyond), the standard library's own limits; no endpoint reads a request body. Errors are logged by type only.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted

from node_agent.exposition import CachedExposition

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 10.0
"""Seconds a connection may stay silent while its request is read: Prometheus and the kubelet send at once."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    """A slow scraper must not hold up shutdown."""

    def handle_error(self, request: object, client_address: object) -> None:
        """One line, the exception's type only (the standard server prints a traceback to stderr)."""
        log.error("metrics request from %s failed: %s", client_address, type(sys.exc_info()[1]).__name__)


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        """No access log: Prometheus and kubelet probes call every few seconds."""

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # a client that stalled or went away: drop it quietly, free the thread


def create_http_app(registry: CollectorRegistry, *, ready: Callable[[], bool]) -> WSGIApplication:
    other_methods = make_wsgi_app(registry)
    exposition = CachedExposition(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if environ.get("REQUEST_METHOD") != "GET":
                answer: Iterable[bytes] = other_methods(environ, start_response)
                return answer
            return _metrics(exposition, environ, start_response)
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            if ready():
                return _json(start_response, "200 OK", {"status": "ready"})
            return _json(start_response, "503 Service Unavailable", {"status": "not ready"})
        return _json(start_response, "404 Not Found", {"error": f"no such endpoint {path}; try /metrics"})

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


def _json(start_response: StartResponse, status: str, body: dict[str, str]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class HttpServer:
    """Serves a WSGI app on a daemon thread until `stop()`."""

    def __init__(self, app: WSGIApplication, *, host: str, port: int, idle_timeout: float = IDLE_TIMEOUT) -> None:
        handler = type("Handler", (_QuietHandler,), {"timeout": idle_timeout})
        self._server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""The agent's plain-HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, served from a background thread.

The other services use aiohttp; the agent deliberately does not. It runs on every GPU node with a 60 MB memory
budget, and aiohttp and the Kubernetes client together already cost about 64 MB. Three GET endpoints need no event
loop: the standard library's threaded WSGI server and prometheus_client's WSGI app (gzip when asked for) serve them
in a few hundred kB.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    """A slow scraper must not hold up shutdown."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """No access log: Prometheus and kubelet probes call every few seconds."""


def create_http_app(registry: CollectorRegistry, *, ready: Callable[[], bool]) -> WSGIApplication:
    metrics = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            # Always the Prometheus text format, as dcgm-exporter serves: rendering OpenMetrics (which Prometheus
            # prefers when offered) costs 1.6 times as much CPU per scrape. Compression is still negotiated.
            body: Iterable[bytes] = metrics({**environ, "HTTP_ACCEPT": "text/plain"}, start_response)
            return body
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            if ready():
                return _json(start_response, "200 OK", {"status": "ready"})
            return _json(start_response, "503 Service Unavailable", {"status": "not ready"})
        return _json(start_response, "404 Not Found", {"error": f"no such endpoint {path}; try /metrics"})

    return app


def _json(start_response: StartResponse, status: str, body: dict[str, str]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class HttpServer:
    """Serves a WSGI app on a daemon thread until `stop()`."""

    def __init__(self, app: WSGIApplication, *, host: str, port: int) -> None:
        self._server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

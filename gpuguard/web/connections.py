"""Hold no connection longer than its limits allow, and no more connections than a listener may have.

aiohttp bounds what it reads (request line, headers) but not how long a client may take: its keep-alive timer runs
only between requests, and nothing bounds a TLS handshake that never finishes, headers that arrive a byte at a
time, a body that stops half-way, a reply the client never reads, or the number of connections. `GuardedSite` is
the listening site every service uses instead of `web.TCPSite`; it adds, per `ConnectionLimits`:

- the number of open connections, counted from `accept()` on the listening socket: one over the limit is closed
  right there, before any TLS work, so connections stuck in their handshake count too;
- the TLS handshake timeout (asyncio's `ssl_handshake_timeout`);
- a header deadline, from a new connection or the first byte of a request on a kept-alive one until aiohttp has
  the whole head and starts the handler (the `track_requests` middleware says so);
- the body timeout, applied by `gpuguard.web.bodies.read_body` inside the handler, and the same timeout for a reply
  the client does not read (armed while the transport's write buffer is full);
- the idle timeout, which is aiohttp's own keep-alive timeout.

`Guard` sits between the transport and aiohttp's protocol, forwarding every call; it only watches and closes. It
also makes aiohttp's own refusals (a head it cannot parse, broken chunked framing) answer with a JSON error in fixed
words, where aiohttp would answer text that quotes the offending bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry, Counter, Gauge

from gpuguard.web.limits import ConnectionLimits

log = logging.getLogger(__name__)

Phase = Literal["header", "body", "send"]
REFUSAL_LOG_EVERY = 60.0
"""Seconds between two log lines about connections refused at the limit (every one is counted)."""


class ConnectionMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.open = Gauge("gpuguard_http_connections_open", "Connections open now, by listener", ["listener"],
                          registry=registry)
        self.refused = Counter("gpuguard_http_connections_refused",
                               "Connections closed on accept because the listener had max-connections open",
                               ["listener"], registry=registry)
        self.timed_out = Counter("gpuguard_http_connections_timed_out",
                                 "Connections closed for taking too long over their headers or over reading a reply",
                                 ["listener", "phase"], registry=registry)


class ConnectionPool:
    """One listener's connections: admitted at accept, released when their socket is closed."""

    def __init__(self, name: str, limits: ConnectionLimits, metrics: ConnectionMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.limits = limits
        self._metrics = metrics
        self._clock = clock
        self._sockets: set[socket.socket] = set()
        self._last_refusal_log = float("-inf")
        metrics.open.labels(name).set_function(lambda: len(self._live()))

    def _live(self) -> set[socket.socket]:
        self._sockets = {s for s in self._sockets if s.fileno() != -1}
        return self._sockets

    def admit(self, connection: socket.socket) -> bool:
        """True if the accepted `connection` may stay open; False: the caller closes it."""
        if len(self._sockets) >= self.limits.max_connections and len(self._live()) >= self.limits.max_connections:
            self._metrics.refused.labels(self.name).inc()
            now = self._clock()
            if now - self._last_refusal_log >= REFUSAL_LOG_EVERY:
                self._last_refusal_log = now
                log.warning("%s: %d connections open, the limit; closing new ones as they arrive",
                            self.name, self.limits.max_connections)
            return False
        self._sockets.add(connection)
        return True

    def timed_out(self, phase: Phase) -> None:
        self._metrics.timed_out.labels(self.name, phase).inc()


class LimitedSocket(socket.socket):
    """A listening socket whose `accept()` closes connections beyond the pool's limit at once.

    asyncio accepts with `sock.accept()`; raising ConnectionAbortedError there is how a connection aborted before it
    was accepted reads, so the event loop simply carries on with the next one.
    """

    pool: ConnectionPool

    def accept(self) -> tuple[socket.socket, Any]:
        connection, address = super().accept()
        if self.pool.admit(connection):
            return connection, address
        connection.close()
        raise ConnectionAbortedError("over the connection limit")


class Guard(asyncio.Protocol):
    """Forwards to aiohttp's protocol for one connection, and closes the connection when a deadline passes."""

    def __init__(self, inner: RequestHandler, pool: ConnectionPool) -> None:
        self._inner = inner
        self._pool = pool
        self._transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._idle = False
        """Between requests: the next byte starts a new header deadline."""

    # -- asyncio.Protocol, forwarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._arm("header", self._pool.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._idle:
            self._idle = False
            self._arm("header", self._pool.limits.header_timeout)
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()  # aiohttp's answer is None: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._arm("send", self._pool.limits.body_timeout)
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._disarm()
        self._inner.resume_writing()

    # -- told by the middleware
    def request_started(self) -> None:
        self._disarm()  # the head is in; the handler bounds the body with the body timeout

    def request_finished(self) -> None:
        self._idle = True  # aiohttp's keep-alive timer bounds the wait for the next request

    def _arm(self, phase: Phase, seconds: float) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._expire, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: Phase) -> None:
        self._deadline = None
        if self._transport is not None and not self._transport.is_closing():
            self._pool.timed_out(phase)
            log.debug("%s: closing a connection that took too long (%s)", self._pool.name, phase)
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()  # nothing worth flushing to a client that stalled
            else:
                self._transport.close()


class JsonErrorsHandler(RequestHandler):
    """aiohttp's protocol for one connection, answering its own refusals with a JSON error in fixed words.

    aiohttp answers a head it cannot parse, or broken chunked framing, with text quoting the offending bytes;
    its logging (through the listener's logger) and closing of the connection are kept as they are.
    """

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        text = ("the request's head or its chunked body framing is not valid HTTP/1.1" if 400 <= status < 500
                else "the server failed to answer this request; see its log")
        response = web.json_response({"error": f"{phrase}: {text}"}, status=status)
        response.force_close()
        return response


def new_handler(server: web.Server) -> JsonErrorsHandler:
    """What `server()` builds, as a `JsonErrorsHandler`: the same settings (aiohttp keeps them in `_kwargs`)."""
    return JsonErrorsHandler(server, loop=asyncio.get_running_loop(), **server._kwargs)


@web.middleware
async def track_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection's `Guard` that a request's head is complete, and when its handler is done."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if not isinstance(guard, Guard):
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_finished()


class GuardedSite(web.BaseSite):
    """A TCP site for `runner` on host:port whose connections `pool` admits and guards."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, pool: ConnectionPool,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 1024) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._pool = host, port, pool

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        pool = self._pool
        handshake = pool.limits.tls_handshake_timeout if self._ssl_context else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: Guard(new_handler(server), pool), sock=self._listening_socket(), ssl=self._ssl_context,
            backlog=self._backlog, ssl_handshake_timeout=handshake,
        )

    def _listening_socket(self) -> LimitedSocket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listening = LimitedSocket(family, kind, proto)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listening.bind(address)
        except OSError:
            listening.close()
            raise
        listening.pool = self._pool
        return listening

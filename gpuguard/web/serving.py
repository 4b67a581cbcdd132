"""Run aiohttp applications on one or more listeners until SIGTERM, and the small handlers every service has.

One process may serve two listeners (HTTPS admission + plain-HTTP metrics), so apps are started with `AppRunner` and
a `GuardedSite` (`gpuguard.web.connections`: the connection limits) rather than `web.run_app`. Each service builds
its apps with a `create_app(...)` factory; this module only binds them to sockets and takes them down gracefully
(in-flight requests finish, up to `shutdown_timeout`). aiohttp's own decompression is off: handlers read bodies
through `gpuguard.web.bodies.read_body`, which decodes them and can answer every failure.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gpuguard.web.connections import ConnectionMetrics, ConnectionPool, GuardedSite, track_requests
from gpuguard.web.limits import ConnectionLimits
from gpuguard.web.logs import stack_only

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    notes: tuple[str, ...] = ()
    """Said in /readyz's body whether or not the service is ready (e.g. a certificate that could not be reloaded)."""


ReadyCheck = Callable[[], bool | Readiness]

CLIENT_FAULTS = (HttpProcessingError, RequestPayloadError, ConnectionError)
"""Errors a client causes (a malformed head, a broken body, hanging up): answered already, logged only at DEBUG."""


class WithoutRequestContent(logging.Filter):
    """Rewrites aiohttp's "Error handling request" records: the line stays, the quoted request content goes.

    What a client caused is not an error of the service, and a client can cause it as often as it likes, so those
    records are lowered to DEBUG (and kept only when that level is on); anything else keeps its level and stack.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if isinstance(error, HttpProcessingError):
            detail = f"refused with HTTP {error.code} ({type(error).__name__})"
        elif isinstance(error, RequestPayloadError):
            detail = "the body's framing is broken (answered already)"
        elif isinstance(error, ConnectionError):
            detail = "the client went away"
        else:
            detail = stack_only(error)
        record.msg, record.args = f"{record.getMessage()}: {detail}", None
        record.exc_info, record.exc_text = None, None
        if isinstance(error, CLIENT_FAULTS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return HTTP_LOG.isEnabledFor(logging.DEBUG)
        return True


HTTP_LOG = logging.getLogger("gpuguard.web.http")
HTTP_LOG.addFilter(WithoutRequestContent())


@dataclass(frozen=True, slots=True)
class Listener:
    app: web.Application
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    name: str = "http"
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    app.router.add_get("/metrics", make_aiohttp_handler(registry))


METRICS_MAX_BODY = 64 * 1024
"""Bytes: /metrics and the probes are GET requests; nothing this port serves reads a body."""


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """A plain-HTTP app serving only /metrics, for a separate metrics port."""
    app = web.Application(client_max_size=METRICS_MAX_BODY)
    add_metrics_route(app, registry)
    return app


def add_probes(app: web.Application, *, ready: ReadyCheck) -> None:
    """`/healthz`: the process serves requests. `/readyz`: it also has what it needs to answer correctly."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        state = ready()
        state = state if isinstance(state, Readiness) else Readiness(state)
        body: dict[str, object] = {"status": "ready" if state.ready else "not ready"}
        if state.notes:
            body["notes"] = list(state.notes)
        return web.json_response(body, status=200 if state.ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def run(listeners: Sequence[Listener], *, registry: CollectorRegistry | None = None,
        shutdown_timeout: float = 10.0) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and let in-flight requests finish."""
    asyncio.run(serve_until_stopped(listeners, registry=registry, shutdown_timeout=shutdown_timeout))


async def serve_until_stopped(listeners: Sequence[Listener], *, registry: CollectorRegistry | None = None,
                              shutdown_timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runners = await start(listeners, registry=registry, shutdown_timeout=shutdown_timeout)
    settle_heap()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def start(listeners: Sequence[Listener], *, registry: CollectorRegistry | None = None,
                shutdown_timeout: float = 10.0) -> list[web.AppRunner]:
    """Start every listener; the caller owns the returned runners and must `cleanup()` them.

    `registry` gets the connection metrics (`gpuguard_http_connections_*`, labelled by listener name)."""
    runners: list[web.AppRunner] = []
    metrics = ConnectionMetrics(registry)
    try:
        for listener in listeners:
            if track_requests not in listener.app.middlewares:
                listener.app.middlewares.append(track_requests)
            # aiohttp's own limits stay in force: request line and each header at most 8190 bytes, at most 128
            # headers (HTTP 400 beyond); its error lines go through HTTP_LOG, which drops the request content.
            runner = web.AppRunner(
                listener.app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout,
                logger=HTTP_LOG, keepalive_timeout=listener.limits.idle_timeout, auto_decompress=False,
                lingering_time=lingering_time(listener.limits),
            )
            await runner.setup()
            runners.append(runner)
            pool = ConnectionPool(listener.name, listener.limits, metrics)
            site = GuardedSite(runner, listener.host, listener.port, pool=pool, ssl_context=listener.ssl_context)
            await site.start()
            scheme = "https" if listener.ssl_context else "http"
            log.info("%s listening on %s", listener.name, ", ".join(_urls(runner, scheme)))
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        raise
    return runners


LINGERING_TIME = 10.0
"""aiohttp's own default: after answering a request whose body it did not read whole (a 413, a 408), the rest of
the body is read and dropped for this long, so a client still sending can read the answer before the close."""


def lingering_time(limits: ConnectionLimits) -> float:
    """Never longer than the body timeout: a client that sends slower than that has had its answer."""
    return min(LINGERING_TIME, limits.body_timeout)


GC_THRESHOLDS = (50_000, 50, 100)
"""Generation-0 threshold raised from 700: handling one request allocates a few hundred containers (the parsed JSON),
nearly all freed by reference counting, so collecting every 700 allocations is wasted work on the request path."""


def settle_heap() -> None:
    """Move everything alive after startup (modules, schemas, the policy) out of the collector's sight.

    A full collection otherwise walks those hundreds of thousands of long-lived objects again and again, which is
    what drives the latency tail of a busy Python server; after `gc.freeze()` collections only scan what requests
    allocate. Call it once, when the service is ready to serve.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _urls(runner: web.AppRunner, scheme: str) -> list[str]:
    return [f"{scheme}://{addr[0]}:{addr[1]}" for addr in runner.addresses if isinstance(addr, tuple)]

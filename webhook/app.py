"""The webhook's HTTP shell: parse the AdmissionReview, call the pure decision, encode the reply.

Errors are translated here, once, into the protocol's own channel: a body that is not an AdmissionReview gets HTTP
400 with a JSON error; a failure inside the decision gets a normal AdmissionReview reply, allowed or denied per
`on_internal_error`, with a status message, logged with the request uid. No exception escapes a handler, and request
bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry

from gpuguard.contracts.admission import (
    AdmissionReview,
    InvalidReview,
    allow,
    deny,
    encode_reply,
    parse_review,
)
from gpuguard.web.logs import log_bug, loggable
from gpuguard.web.policy_source import PolicySource
from gpuguard.web.serving import add_metrics_route, add_probes
from gpuguard.web.tls import ReloadingCertificate
from webhook import keys
from webhook.memo import Answer, MutationMemo, Unknown
from webhook.metrics import WebhookMetrics
from webhook.review import Outcome, display_name, review
from webhook.settings import WebhookSettings

log = logging.getLogger(__name__)

Endpoint = Literal["mutate", "validate"]
_LOGGED_DECISIONS = frozenset({"denied", "warned", "audited"})


def create_app(
    settings: WebhookSettings,
    *,
    policy: PolicySource,
    registry: CollectorRegistry,
    certificate: ReloadingCertificate | None = None,
    serve_metrics: bool = False,
) -> web.Application:
    """The HTTPS admission app. `serve_metrics` also mounts /metrics here (tests; normally a separate port)."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.POLICY] = policy
    app[keys.METRICS] = metrics = WebhookMetrics(registry)
    app[keys.MEMO] = MutationMemo()
    app.router.add_post("/mutate", _handler("mutate"))
    app.router.add_post("/validate", _handler("validate"))
    add_probes(app, ready=lambda: True)
    if serve_metrics:
        add_metrics_route(app, registry)
    app.cleanup_ctx.append(lambda _: policy.watching(settings.reload_interval))
    if certificate is not None:
        metrics.certificate_expiry.set_function(lambda: certificate.not_after)
        app.cleanup_ctx.append(lambda _: _watch_certificate(certificate, metrics, settings.reload_interval))
    return app


def _handler(endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await answer(request, endpoint)

    return handle


async def answer(request: web.Request, endpoint: Endpoint) -> web.Response:
    app = request.app
    metrics = app[keys.METRICS]
    started = time.perf_counter()
    limit = app[keys.SETTINGS].max_body_bytes
    if (request.content_length or 0) > limit:  # refused before reading it: a declared size is enough
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length or 0)
    body = await request.read()
    recalled = _recall(app, body) if endpoint == "mutate" else None
    if isinstance(recalled, Answer):
        known = recalled.outcome
        metrics.admitted(endpoint, recalled.operation, known.kind, known.decision, known.rule,
                         time.perf_counter() - started)
        return web.Response(body=recalled.reply, content_type="application/json")
    try:
        admission = parse_review(body, pod_view=endpoint == "mutate")
    except InvalidReview as error:
        metrics.bad_requests.labels(endpoint).inc()
        return web.json_response({"error": str(error)}, status=400)
    reply, outcome = _decide(endpoint, recalled, admission, app)
    _record(metrics, endpoint, admission, outcome, time.perf_counter() - started)
    return web.Response(body=reply, content_type="application/json")


def _recall(app: web.Application, body: bytes) -> Answer | Unknown | None:
    """A repeat of a request already decided (see `webhook.memo`), the shape of a new one, or None on any doubt."""
    try:
        return app[keys.MEMO].recall(body, generation=app[keys.POLICY].generation)
    except Exception as error:  # the memo is an optimisation: if it fails, decide afresh
        log_bug(log, "mutation memo failed; deciding afresh", error=error)
        return None


def _decide(
    endpoint: Endpoint, unknown: Unknown | None, admission: AdmissionReview, app: web.Application
) -> tuple[bytes, Outcome | None]:
    """The encoded reply and the decision behind it (None when the decision itself failed)."""
    request = admission.request
    policy, settings = app[keys.POLICY], app[keys.SETTINGS]
    try:
        if unknown is not None:
            answered = app[keys.MEMO].answer(unknown, admission, policy.policy)
            return answered.reply, answered.outcome
        outcome = review(endpoint, request, policy.policy)
        return encode_reply(admission.api_version, outcome.response), outcome
    except Exception as error:  # a bug must cost one answer, not the server: reply per the configured failure mode
        log_bug(log, "internal error on /%s uid=%s %s", endpoint, loggable(request.uid),
                loggable(display_name(request)), error=error)
        message = f"gpuguard internal error on /{endpoint} (uid {request.uid}); see the webhook log"
        if settings.on_internal_error == "deny":
            failed = deny(request.uid, message, code=500, reason="InternalError")
        else:
            failed = allow(request.uid, warnings=[message])
        return encode_reply(admission.api_version, failed), None


def _record(
    metrics: WebhookMetrics, endpoint: Endpoint, admission: AdmissionReview, outcome: Outcome | None, seconds: float
) -> None:
    request = admission.request
    decision = outcome.decision if outcome else "error"
    kind = outcome.kind if outcome else request.kind.kind
    metrics.admitted(endpoint, request.operation, kind, decision, outcome.rule if outcome else "", seconds)
    if outcome is not None and outcome.decision in _LOGGED_DECISIONS:
        problems = loggable("; ".join(str(p) for p in outcome.problems), limit=2000)
        log.info("%s %s %s uid=%s rule=%s: %s", decision, kind, loggable(display_name(request)),
                 loggable(request.uid), outcome.rule, problems)


@contextlib.asynccontextmanager
async def _watch_certificate(
    certificate: ReloadingCertificate, metrics: WebhookMetrics, interval: float
) -> AsyncIterator[None]:
    """Re-read the serving certificate in the background (cert-manager rotates its Secret in place)."""

    async def poll() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                reloaded = await asyncio.to_thread(certificate.refresh)
            except Exception as error:  # a bug here must not end the polling: keep serving, try again next interval
                log_bug(log, "checking the serving certificate %s failed", certificate.cert, error=error)
                continue
            if reloaded:
                metrics.certificate_reloads.inc()
                log.info("serving certificate reloaded from %s", certificate.cert)

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

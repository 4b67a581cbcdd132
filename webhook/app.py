"""The webhook's HTTP shell: parse the AdmissionReview, call the pure decision, encode the reply.

Errors are translated here, once, into the protocol's own channel: a body that cannot be read (too large, an
encoding that does not decode, too slow, the client gone: `gpuguard.web.bodies`) gets its 4xx with a JSON error, a
body that is not an AdmissionReview gets HTTP 400 with a JSON error; a failure inside the decision gets a normal
AdmissionReview reply, allowed or denied per `on_internal_error`, with a status message, logged with the request
uid. No exception escapes a handler. Log lines follow `gpuguard.web.logs`: a decision is logged with the uid,
namespace/name, rule and the number of problems; what the problems are goes to the user, in the reply.

The serving certificate is re-read in the background; files that cannot be served keep the certificate in use and
are logged once, counted, and named in /readyz's body, which turns 503 only once the certificate in use has
expired (nothing could verify it then).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
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
from gpuguard.policy import podspec
from gpuguard.web.bodies import UnreadableBody, read_body
from gpuguard.web.logs import identity, log_bug
from gpuguard.web.policy_source import PolicySource
from gpuguard.web.serving import Readiness, add_metrics_route, add_probes
from gpuguard.web.tls import CertificateRefused, ReloadingCertificate
from webhook import keys
from webhook.memo import Answer, MutationMemo, Unknown
from webhook.metrics import KINDS, WebhookMetrics
from webhook.review import Outcome, namespace_of, review
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
    background: Sequence[Callable[[web.Application], AbstractAsyncContextManager[None]]] = (),
) -> web.Application:
    """The HTTPS admission app. `serve_metrics` also mounts /metrics here (tests; normally a separate port)."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.POLICY] = policy
    app[keys.METRICS] = metrics = WebhookMetrics(registry)
    app[keys.MEMO] = MutationMemo()
    app.router.add_post("/mutate", _handler("mutate"))
    app.router.add_post("/validate", _handler("validate"))
    add_probes(app, ready=(lambda: Readiness(True)) if certificate is None else _certificate_readiness(certificate))
    if serve_metrics:
        add_metrics_route(app, registry)
    app.cleanup_ctx.append(lambda _: policy.watching(settings.reload_interval))
    if certificate is not None:
        metrics.certificate_expiry.set_function(lambda: certificate.not_after.timestamp())
        app.cleanup_ctx.append(lambda _: _watch_certificate(certificate, metrics, settings.reload_interval))
    app.cleanup_ctx.extend(background)
    return app


def _handler(endpoint: Endpoint) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await answer(request, endpoint)

    return handle


async def answer(request: web.Request, endpoint: Endpoint) -> web.Response:
    app = request.app
    metrics = app[keys.METRICS]
    started = time.perf_counter()
    settings = app[keys.SETTINGS]
    try:
        body = await read_body(request, limit=settings.max_body_bytes, timeout=settings.connections.body_timeout)
    except UnreadableBody as error:
        metrics.unreadable_bodies.labels(endpoint, error.reason).inc()
        return web.json_response({"error": error.message}, status=error.status)
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
        log_bug(log, "internal error on /%s %s", endpoint, who(admission), error=error)
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
        log.info("%s %s %s rule=%s: %d problem(s)", decision, kind if kind in KINDS else "other", who(admission),
                 outcome.rule, len(outcome.problems))


def who(admission: AdmissionReview) -> str:
    """The request as a log line may name it: uid and namespace/name (never generateName or other fields)."""
    request = admission.request
    metadata = podspec.mapping((request.object or {}).get("metadata"))
    return identity(uid=request.uid, namespace=namespace_of(request), name=request.name or metadata.get("name") or "")


def _certificate_readiness(certificate: ReloadingCertificate) -> Callable[[], Readiness]:
    def check() -> Readiness:
        expires = f"{certificate.not_after:%Y-%m-%dT%H:%M:%SZ}"
        expired = certificate.not_after <= datetime.datetime.now(datetime.timezone.utc)
        notes = [f"the serving certificate in use expired at {expires}"] if expired else []
        if certificate.problem is not None:
            notes.append(f"the certificate files on disk are refused ({certificate.problem}); "
                         f"the certificate in use expires at {expires}")
        return Readiness(not expired, tuple(notes))

    return check


@contextlib.asynccontextmanager
async def _watch_certificate(
    certificate: ReloadingCertificate, metrics: WebhookMetrics, interval: float
) -> AsyncIterator[None]:
    """Re-read the serving certificate in the background (cert-manager rotates its Secret in place)."""

    async def poll() -> None:
        while True:
            await asyncio.sleep(interval)
            refused_before = certificate.problem is not None
            try:
                reloaded = await asyncio.to_thread(certificate.refresh)
            except CertificateRefused as error:
                metrics.certificate_reload_failures.inc()
                metrics.certificate_reload_failed.set(1)
                log.warning("serving certificate files refused, keeping the certificate in use (it expires at "
                            "%s): %s", f"{certificate.not_after:%Y-%m-%dT%H:%M:%SZ}", error)
                continue
            except Exception as error:  # a bug here must not end the polling: keep serving, try again next interval
                log_bug(log, "checking the serving certificate %s failed", certificate.cert, error=error)
                continue
            if certificate.problem is None:
                metrics.certificate_reload_failed.set(0)
                if refused_before and not reloaded:
                    log.info("serving certificate files %s are the ones in use again", certificate.cert)
            if reloaded:
                metrics.certificate_reloads.inc()
                log.info("serving certificate reloaded from %s (expires at %s)", certificate.cert,
                         f"{certificate.not_after:%Y-%m-%dT%H:%M:%SZ}")

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""The extender's HTTP shell: parse ExtenderArgs, resolve node states, call the pure decision, encode the reply.

Errors are translated here, once, into the protocol's channel. `/filter` always answers 200: a body that is not an
ExtenderArgs, a body over the size limit, a node cache that is not ready, or a bug all come back in `Error` (the
scheduler then fails this attempt and retries, or skips us if `ignorable`). `/prioritize` answers zero scores for an
internal failure (logged), and 400 for a body it cannot read at all (there is no host list to score); kube-scheduler
ignores failed prioritize calls either way. No exception escapes a handler, and bodies are never logged.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

from aiohttp import web
from prometheus_client import CollectorRegistry

from gpuguard.contracts.extender import (
    ExtenderArgs,
    ExtenderFilterResult,
    InvalidArgs,
    encode_filter_result,
    encode_priorities,
    parse_args,
)
from gpuguard.web.logs import log_bug
from gpuguard.web.policy_source import PolicySource
from gpuguard.web.serving import add_metrics_route, add_probes
from scheduler_ext import keys
from scheduler_ext.extender import (
    FilterOutcome,
    decide_filter,
    decide_filter_names,
    decide_priorities,
    decide_priorities_names,
)
from scheduler_ext.inventory.store import InventoryStore
from scheduler_ext.metrics import ExtenderMetrics, StateCollector
from scheduler_ext.settings import ExtenderSettings, GcSettings
from scheduler_ext.utilization import UtilizationBoard

log = logging.getLogger(__name__)

Verb = Literal["filter", "prioritize"]
CleanupContext = Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]

NO_NODE_SOURCE = (
    "gpuguard extender got node names only (nodeCacheCapable: true) but has no node cache: start it with "
    "--cluster-state, --kubeconfig or --in-cluster, or set nodeCacheCapable: false"
)
NOT_SYNCED = "gpuguard extender's node cache is still syncing; retry shortly"


class NotAnswerable(Exception):
    """The request is well-formed but cannot be decided now; the message says why and what to do."""


def create_app(
    settings: ExtenderSettings,
    *,
    policy: PolicySource,
    registry: CollectorRegistry,
    store: InventoryStore,
    board: UtilizationBoard,
    metrics: ExtenderMetrics | None = None,
    background: Sequence[CleanupContext] = (),
    serve_metrics: bool = True,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The extender app. `background` are cleanup contexts that keep the store and board current."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.POLICY] = policy
    app[keys.STORE] = store
    app[keys.BOARD] = board
    app[keys.CLOCK] = clock
    app[keys.METRICS] = metrics or ExtenderMetrics(registry)
    registry.register(StateCollector(store, board, clock=clock))
    app.router.add_post("/filter", handle_filter)
    app.router.add_post("/prioritize", handle_prioritize)
    add_probes(app, ready=lambda: store.ready or not settings.has_node_source)
    if serve_metrics:
        add_metrics_route(app, registry)
    app.cleanup_ctx.append(lambda _: policy.watching(settings.reload_interval))
    app.cleanup_ctx.extend(background)
    return app


# --------------------------------------------------------------------------------------------------------- handlers


async def handle_filter(request: web.Request) -> web.Response:
    app = request.app
    started = time.perf_counter()
    outcome, result = "ok", ExtenderFilterResult()
    try:
        args = _parse(app, await request.read())
        decision = _filter(app, args)
        result = decision.result
        for reason, count in decision.denials.items():
            app[keys.METRICS].denials.labels(reason).inc(count)
    except (InvalidArgs, web.HTTPRequestEntityTooLarge) as error:
        outcome, result = "bad_request", ExtenderFilterResult(error=f"gpuguard: {_describe(error)}")
    except NotAnswerable as error:
        outcome, result = "error", ExtenderFilterResult(error=str(error))
    except Exception as error:  # a bug must cost one answer, not the server
        log_bug(log, "internal error in /filter", error=error)
        outcome, result = "error", ExtenderFilterResult(error="gpuguard extender internal error; see its log")
    body = encode_filter_result(result)
    _observe(app, "filter", outcome, started)
    return web.Response(body=body, content_type="application/json")


async def handle_prioritize(request: web.Request) -> web.Response:
    app = request.app
    started = time.perf_counter()
    try:
        args = _parse(app, await request.read())
    except (InvalidArgs, web.HTTPRequestEntityTooLarge) as error:
        _observe(app, "prioritize", "bad_request", started)
        return web.json_response({"error": f"gpuguard: {_describe(error)}"}, status=400)
    outcome = "ok"
    try:
        hosts, scores = _prioritize(app, args)
    except NotAnswerable as error:
        log.warning("prioritize answered with zero scores: %s", error)
        outcome, hosts, scores = "error", args.candidate_names, [0] * len(args.candidate_names)
    except Exception as error:
        log_bug(log, "internal error in /prioritize; answering zero scores", error=error)
        outcome, hosts, scores = "error", args.candidate_names, [0] * len(args.candidate_names)
    body = encode_priorities(hosts, scores)
    _observe(app, "prioritize", outcome, started)
    return web.Response(body=body, content_type="application/json")


def _parse(app: web.Application, body: bytes) -> ExtenderArgs:
    """Full-Node requests reuse the Node objects of the previous one whose JSON text is unchanged."""
    store = app[keys.STORE]
    args = parse_args(body, known_nodes=store.node_texts)
    if args.nodes is not None:
        store.node_texts = args.nodes.known_texts()
    return args


def _filter(app: web.Application, args: ExtenderArgs) -> FilterOutcome:
    board, scheduling, now = app[keys.BOARD].nodes, app[keys.POLICY].policy.scheduling, app[keys.CLOCK]()
    store = _store(app)
    if args.nodes is not None:
        states = store.states_for_objects(args.nodes.items)
        return decide_filter(args, states, utilization=board, scheduling=scheduling, now=now)
    _require_cache(app)
    return decide_filter_names(args, store.index, utilization=board, scheduling=scheduling, now=now)


def _prioritize(app: web.Application, args: ExtenderArgs) -> tuple[list[str], list[int]]:
    board, scheduling, now = app[keys.BOARD].nodes, app[keys.POLICY].policy.scheduling, app[keys.CLOCK]()
    store = _store(app)
    if args.nodes is not None:
        states = store.states_for_objects(args.nodes.items)
        return decide_priorities(args, states, utilization=board, scheduling=scheduling, now=now)
    _require_cache(app)
    return decide_priorities_names(args, store.index, utilization=board, scheduling=scheduling, now=now)


def _store(app: web.Application) -> InventoryStore:
    """The node cache, its MIG layouts resolved through the catalog of the policy in force."""
    store = app[keys.STORE]
    store.use_catalog(app[keys.POLICY].policy.catalog)
    return store


def _require_cache(app: web.Application) -> None:
    if not app[keys.SETTINGS].has_node_source:
        raise NotAnswerable(NO_NODE_SOURCE)
    if not app[keys.STORE].ready:
        raise NotAnswerable(NOT_SYNCED)


def _describe(error: Exception) -> str:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return f"the request body is too large ({error.text}); configure nodeCacheCapable: true to send node names only"
    return str(error)


def _observe(app: web.Application, verb: Verb, outcome: str, started: float) -> None:
    metrics = app[keys.METRICS]
    metrics.duration.labels(verb).observe(time.perf_counter() - started)
    metrics.requests.labels(verb, outcome).inc()


# --------------------------------------------------------------------------------------------------------------- gc


def tune_gc(settings: GcSettings) -> None:
    """Raise the collection thresholds (at startup) so request garbage does not trigger full collections."""
    if settings.mode == "tuned":
        gc.set_threshold(*settings.thresholds)


def freeze_state(settings: GcSettings) -> Callable[[], None]:
    """The callback for sources after a full load: collect once, then move everything alive out of collections."""

    def freeze() -> None:
        if settings.mode == "tuned":
            gc.collect()
            gc.freeze()

    return freeze

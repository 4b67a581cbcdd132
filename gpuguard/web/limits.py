"""How long a client may take over each part of a connection, and how many connections a listener holds at once.

The servers' callers give up long before these limits: kube-apiserver waits at most 30 s for a webhook
(`timeoutSeconds`, 1-30) and its client's TLS handshake timeout is 10 s; kube-scheduler waits `httpTimeout` for
the extender (5 s by default, the chart sets 3 s, other projects use 30 s). So a connection that is still in the
handshake after 20 s, or has not finished sending its headers or its body 40 s after it began, belongs to no
caller that is still waiting; it is closed. An idle keep-alive connection is closed after 60 s: below Go's own
90 s idle timeout, so both sides drop it within minutes, and a client reusing it at the very moment it closes is
a case Go's transport retries for requests it has not yet written. A connection over `max_connections` is closed
as soon as it is accepted, before any TLS work. Kept free of aiohttp so that the command lines can be built
without importing the servers.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from gpuguard.cli_support import env_default


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    tls_handshake_timeout: float = 20.0
    """Seconds from accepting a connection to a finished TLS handshake (HTTPS listeners only); 2x Go's 10 s."""
    header_timeout: float = 40.0
    """Seconds from a new connection, or the first byte of a request on a kept-alive one, to the end of its headers."""
    body_timeout: float = 40.0
    """Seconds a handler waits for the whole body once the headers are in; also how long a reply may sit unread."""
    idle_timeout: float = 60.0
    """Seconds a kept-alive connection may wait for its next request."""
    max_connections: int = 1000
    """Connections open at once, counted from accept (so connections still in their TLS handshake count)."""


METRICS_MAX_CONNECTIONS = 64
"""A metrics port serves Prometheus and the probes: a handful of connections at a time."""


def for_metrics(limits: ConnectionLimits) -> ConnectionLimits:
    """The same timeouts with a small connection bound, for a plain-HTTP /metrics listener."""
    return dataclasses.replace(limits, max_connections=min(limits.max_connections, METRICS_MAX_CONNECTIONS))


def add_connection_arguments(parser: argparse.ArgumentParser, *, defaults: ConnectionLimits, tls: bool) -> None:
    """The `--*-timeout` and `--max-connections` flags (environment `GPUGUARD_<FLAG>` as their default)."""
    group = parser.add_argument_group("connection limits")
    fields = [("header_timeout", "until a request's headers are complete"),
              ("body_timeout", "until its body is complete (and for an unread reply)"),
              ("idle_timeout", "a kept-alive connection may wait for its next request")]
    if tls:
        fields.insert(0, ("tls_handshake_timeout", "until the TLS handshake is done"))
    for name, text in fields:
        default = getattr(defaults, name)
        group.add_argument(f"--{name.replace('_', '-')}", type=_positive_float, metavar="SECONDS",
                           default=float(env_default(name.upper()) or default),
                           help=f"seconds {text} (default {default:g})")
    group.add_argument("--max-connections", type=_positive_int, metavar="N",
                       default=int(env_default("MAX_CONNECTIONS") or defaults.max_connections),
                       help=f"connections open at once; more are closed when accepted (default {defaults.max_connections})")


def limits_from_args(args: argparse.Namespace, defaults: ConnectionLimits) -> ConnectionLimits:
    return ConnectionLimits(
        tls_handshake_timeout=getattr(args, "tls_handshake_timeout", defaults.tls_handshake_timeout),
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        idle_timeout=args.idle_timeout,
        max_connections=args.max_connections,
    )


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value

"""Every `gpuguard ...` command line the chart renders is accepted by gpuguard's own argument parser."""

from __future__ import annotations

import pytest
import yaml

from gpuguard.cli import build_parser
from gpuguard.web.limits import ConnectionLimits
from scheduler_ext.settings import CONNECTIONS
from tests.chart.helm import SCENARIOS, load_values, render
from webhook.cli import settings_from_args


def gpuguard_command_lines(values: tuple[str, ...], extra: str = "") -> list[tuple[str, list[str]]]:
    lines = []
    for obj, spec in render(values, extra=extra).workloads():
        for container in spec["containers"]:
            if container.get("command") == ["gpuguard"]:
                lines.append((f"{obj['metadata']['name']}/{container['name']}", list(container["args"])))
    return lines


@pytest.mark.parametrize("values", [(), *((s,) for s in SCENARIOS)], ids=["defaults", *SCENARIOS])
def test_every_rendered_gpuguard_command_line_parses(values: tuple[str, ...]) -> None:
    parser = build_parser()
    parsed = set()
    for where, args in gpuguard_command_lines(values):
        subcommand = next(a for a in args if not a.startswith("-"))
        try:
            namespace = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: gpuguard refuses {' '.join(args)}")
        assert callable(namespace.func), where
        parsed.add(subcommand)
    assert {"webhook", "extender"} <= parsed
    assert ("agent" in parsed) is not any("agent-off" in v for v in values)


def test_the_webhook_settings_built_from_the_chart_arguments_are_the_charts_values() -> None:
    (args,) = [a for where, a in gpuguard_command_lines(()) if where.startswith("gpuguard-webhook/")]
    settings = settings_from_args(build_parser().parse_args(args))
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 8443, 9090)
    assert str(settings.tls_cert) == "/etc/gpuguard-tls/tls.crt" and settings.self_signed_dir is None
    assert (settings.service_name, settings.namespace) == ("gpuguard-webhook", "gpuguard")


def test_the_extender_answers_on_loopback_and_serves_metrics_on_the_pod_ip() -> None:
    from scheduler_ext.cli import settings_from_args as extender_settings

    (args,) = [a for where, a in gpuguard_command_lines(()) if "extender" in a]
    settings = extender_settings(build_parser().parse_args(args))
    assert settings.host == "127.0.0.1"
    assert settings.in_cluster
    if settings.metrics_port:
        assert settings.metrics_host == "0.0.0.0"


def test_the_agent_reads_its_node_name_from_the_downward_api_and_uses_nvml() -> None:
    (args,) = [a for where, a in gpuguard_command_lines(()) if "agent" in a]
    namespace = build_parser().parse_args(args)
    assert namespace.backend == "nvml"
    assert namespace.node_name == "$(NODE_NAME)"
    assert namespace.in_cluster


def limits_of(values: dict[str, float]) -> ConnectionLimits:
    return ConnectionLimits(tls_handshake_timeout=values.get("tlsHandshakeTimeout", 20.0),
                            header_timeout=values["headerTimeout"], body_timeout=values["bodyTimeout"],
                            idle_timeout=values["idleTimeout"], max_connections=int(values["maxConnections"]))


CHANGED = """
webhook:
  connections: {tlsHandshakeTimeout: 7.5, headerTimeout: 31, bodyTimeout: 32, idleTimeout: 33, maxConnections: 34}
scheduler:
  extender:
    connections: {headerTimeout: 11, bodyTimeout: 12.5, idleTimeout: 13, maxConnections: 14}
"""


def connection_limits(extra: str) -> tuple[ConnectionLimits, ConnectionLimits]:
    """The limits the webhook and the extender are started with, parsed from the rendered command lines."""
    from scheduler_ext.cli import settings_from_args as extender_settings

    lines = gpuguard_command_lines((), extra)
    (webhook,) = [a for where, a in lines if where.startswith("gpuguard-webhook/")]
    (extender,) = [a for _, a in lines if "extender" in a]
    parser = build_parser()
    return (settings_from_args(parser.parse_args(webhook)).connections,
            extender_settings(parser.parse_args(extender)).connections)


def test_the_charts_default_connection_limits_are_the_services_own_defaults() -> None:
    values = load_values()
    assert limits_of(values["webhook"]["connections"]) == ConnectionLimits()
    assert limits_of(values["scheduler"]["extender"]["connections"]) == CONNECTIONS
    assert connection_limits("") == (ConnectionLimits(), CONNECTIONS)


def test_connection_limits_set_in_the_values_reach_the_webhook_and_the_extender() -> None:
    changed = yaml.safe_load(CHANGED)
    assert connection_limits(CHANGED) == (limits_of(changed["webhook"]["connections"]),
                                          limits_of(changed["scheduler"]["extender"]["connections"]))

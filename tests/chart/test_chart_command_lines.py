"""Every `gpuguard ...` command line the chart renders is accepted by gpuguard's own argument parser.

Subcommands that this checkout does not register yet (the extender's and the agent's, built in parallel) cannot be
parsed here; the test names them, and parses them as soon as they are registered in gpuguard/cli.py.
"""

from __future__ import annotations

import argparse

import pytest

from gpuguard.cli import build_parser
from tests.chart.helm import SCENARIOS, render
from webhook.cli import settings_from_args

BUILT_ELSEWHERE = {"extender", "agent"}


def registered_subcommands(parser: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name for action in actions for name in action.choices}


def gpuguard_command_lines(values: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    lines = []
    for obj, spec in render(values).workloads():
        for container in spec["containers"]:
            if container.get("command") == ["gpuguard"]:
                lines.append((f"{obj['metadata']['name']}/{container['name']}", list(container["args"])))
    return lines


@pytest.mark.parametrize("values", [(), *((s,) for s in SCENARIOS)], ids=["defaults", *SCENARIOS])
def test_every_rendered_gpuguard_command_line_parses(values: tuple[str, ...]) -> None:
    parser = build_parser()
    known = registered_subcommands(parser)
    parsed, pending = set(), set()
    for where, args in gpuguard_command_lines(values):
        subcommand = next(a for a in args if not a.startswith("-"))
        if subcommand not in known:
            pending.add(subcommand)
            continue
        try:
            namespace = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: gpuguard refuses {' '.join(args)}")
        assert callable(namespace.func), where
        parsed.add(subcommand)
    assert pending <= BUILT_ELSEWHERE
    assert {"webhook", "certs"} <= parsed, "the webhook, and the certificate jobs and test"


def test_the_webhook_settings_built_from_the_chart_arguments_are_the_charts_values() -> None:
    (args,) = [a for where, a in gpuguard_command_lines(()) if where.startswith("gpuguard-webhook/")]
    settings = settings_from_args(build_parser().parse_args(args))
    assert (settings.host, settings.port, settings.metrics_port) == ("0.0.0.0", 8443, 9090)
    assert str(settings.tls_cert) == "/etc/gpuguard-tls/tls.crt" and settings.self_signed_dir is None
    assert (settings.service_name, settings.namespace) == ("gpuguard-webhook", "gpuguard")

"""The `gpuguard` console script: one subcommand per service or tool (docs/cli.md describes each).

This module is the composition root: the only part of the core that imports the services, to register their
subcommands. Each service owns its arguments and its `main`: `python -m webhook` is the same as `gpuguard webhook`
and imports only that service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gpuguard import __version__
from gpuguard.certs_cli import add_certs_parser
from gpuguard.cli_support import add_log_level_argument, help_text, setup_logging
from gpuguard.demo.cli import add_demo_parser
from gpuguard.dra_cli import add_dra_parser
from gpuguard.simulate.cli import add_simulate_parser
from gpuguard.policy_cli import add_policy_parser
from node_agent.cli import add_agent_parser
from scheduler_ext.cli import add_extender_parser
from scheduler_ext.miglayouts import add_mig_layouts_parser
from webhook.cli import add_offline_parsers, add_webhook_parser

DESCRIPTION = """
GPU model serving on Kubernetes, correct by default: an admission webhook that gives KServe predictor pods the right
GPU, tolerations, node selector and scheduler and refuses bad GPU requests with their fix, a scheduler extender that
places them by MIG fit and GPU utilization, and a node agent that reports the GPUs. The same decisions run offline
(mutate, validate, policy check) and on this machine (demo, simulate). `gpuguard COMMAND --help` describes each
command; docs/cli.md in the repository describes them all.
"""
EXAMPLES = (
    "gpuguard demo",
    "gpuguard validate -f examples/inferenceservices.yaml",
    "gpuguard policy check examples/policy.yaml",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpuguard", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=help_text(DESCRIPTION), epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES),
    )
    parser.add_argument("--version", action="version", version=f"gpuguard {__version__}")
    add_log_level_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_webhook_parser(commands)
    add_offline_parsers(commands)
    add_extender_parser(commands)
    add_mig_layouts_parser(commands)
    add_policy_parser(commands)
    add_dra_parser(commands)
    add_certs_parser(commands)
    add_agent_parser(commands)
    add_demo_parser(commands)
    add_simulate_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

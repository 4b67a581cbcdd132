"""The `gpuguard` console script: one subcommand per service or tool (see DESIGN.md "Command line").

This module is the composition root: the only part of the core that imports the services, to register their
subcommands. Each service owns its arguments and its `main` (`python -m webhook` is the same as `gpuguard webhook`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gpuguard import __version__
from gpuguard.policy_cli import add_policy_parser
from scheduler_ext.cli import add_extender_parser
from webhook.cli import add_offline_parsers, add_webhook_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpuguard {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_webhook_parser(commands)
    add_offline_parsers(commands)
    add_extender_parser(commands)
    add_policy_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

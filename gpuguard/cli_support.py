"""Command-line plumbing the services share: environment defaults and the common flags.

Precedence is command line > environment > built-in default: every flag's default is read from a `GPUGUARD_*`
variable when set, so a Deployment can configure a service through `env:` as well as `args:`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def env_default(name: str, default: str | None = None) -> str | None:
    """The value of `GPUGUARD_<NAME>` if set (and not empty), else `default`."""
    return os.environ.get(f"GPUGUARD_{name}") or default


def env_int(name: str, default: int) -> int:
    value = env_default(name)
    return int(value) if value else default


HELP_WIDTH = 100


def add_command(
    commands: Any, name: str, *, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` says what it does (`description`, a paragraph) and shows how (`examples`)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=summary, description=help_text(description),
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def help_text(description: str) -> str:
    """Paragraphs (separated by blank lines) filled to the help width; RawDescriptionHelpFormatter keeps them."""
    paragraphs = [" ".join(part.split()) for part in description.strip().split("\n\n")]
    return "\n\n".join(textwrap.fill(part, HELP_WIDTH) for part in paragraphs)


def add_policy_argument(parser: argparse.ArgumentParser, *, reloaded: bool = True) -> None:
    """`--policy FILE`; `reloaded` says whether the command keeps running and re-reads it when it changes."""
    parser.add_argument(
        "--policy", type=Path, default=env_default("POLICY"),
        help=f"policy YAML{', re-read when it changes' if reloaded else ''} (default: the built-in policy, "
        "examples/policy.yaml; env GPUGUARD_POLICY)",
    )


def add_listen_arguments(parser: argparse.ArgumentParser, *, port: int) -> None:
    parser.add_argument("--host", default=env_default("HOST", "0.0.0.0"), help="address to listen on")
    parser.add_argument("--port", type=int, default=env_int("PORT", port), help=f"port to listen on (default {port})")


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default=env_default("LOG_LEVEL", "INFO"), choices=LOG_LEVELS,
                        help="log verbosity (default INFO; env GPUGUARD_LOG_LEVEL)")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def service_main(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """`python -m <service>`: the same arguments as `gpuguard <service>`, without importing the other services."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_log_level_argument(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return run(args)

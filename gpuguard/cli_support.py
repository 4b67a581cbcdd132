"""Command-line plumbing the services share: environment defaults and the common flags.

Precedence is command line > environment > built-in default: every flag's default is read from a `GPUGUARD_*`
variable when set, so a Deployment can configure a service through `env:` as well as `args:`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def env_default(name: str, default: str | None = None) -> str | None:
    """The value of `GPUGUARD_<NAME>` if set (and not empty), else `default`."""
    return os.environ.get(f"GPUGUARD_{name}") or default


def env_int(name: str, default: int) -> int:
    value = env_default(name)
    return int(value) if value else default


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", type=Path, default=env_default("POLICY"),
        help="policy YAML, re-read when it changes (default: the embedded DESIGN.md example; env GPUGUARD_POLICY)",
    )


def add_listen_arguments(parser: argparse.ArgumentParser, *, port: int) -> None:
    parser.add_argument("--host", default=env_default("HOST", "0.0.0.0"), help="address to listen on")
    parser.add_argument("--port", type=int, default=env_int("PORT", port), help=f"port to listen on (default {port})")

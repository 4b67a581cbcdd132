"""`gpuguard policy check FILE`: print every problem in a policy file with its field path; exit 1 if any."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpuguard.policy.loading import PolicyError, parse_policy


def add_policy_parser(commands: Any) -> None:
    policy = commands.add_parser("policy", help="work with policy files")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a policy file; exit 1 naming each wrong field")
    check.add_argument("file", type=Path, help="policy YAML (or - for standard input)")
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    source = "standard input" if str(args.file) == "-" else str(args.file)
    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
    except OSError as error:
        print(f"{source}: cannot read: {error.strerror or error}", file=sys.stderr)
        return 1
    try:
        policy = parse_policy(text)
    except PolicyError as error:
        print(f"{source}: {len(error.issues)} problem(s):", file=sys.stderr)
        for issue in error.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    print(f"{source}: valid GpuPolicy ({len(policy.rules)} rules, mode {policy.mode})")
    return 0

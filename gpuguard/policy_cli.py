"""`gpuguard policy check FILE` and `gpuguard policy schema`: a policy's every problem, and the policy reference.

`check` prints each problem as `FILE:LINE:COLUMN: field.path: message`, the form editors and CI annotations jump to,
and exits 1 if there is any. `schema` prints `docs/policy-reference.md`, read from the policy's models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpuguard.cli_support import add_command
from gpuguard.policy.loading import PolicyError, PolicyIssue, parse_policy

CHECK_DESCRIPTION = """
Load a policy file the way the webhook, extender and agent load it, and report every problem in one run: schema
errors (unknown keys, wrong types and values, each with the key or value it probably meant) and the checks that
span fields (MIG profiles the catalog or a rule's GPU model lacks, limits a rule exceeds, duplicate rule names).
Each line gives the file, line and column, the field path and the fix.

Exit status: 0 when the policy is valid, 1 when it has problems or cannot be read.
"""

SCHEMA_DESCRIPTION = """
Print the policy reference (every key, its type, default and meaning, section by section) as Markdown. It is read
from the models gpuguard loads policies with, so it is always this version's; docs/policy-reference.md is its
output.
"""


def add_policy_parser(commands: Any) -> None:
    policy = commands.add_parser(
        "policy", help="work with policy files", description="Check policy files and print the policy reference."
    )
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = add_command(
        actions, "check", summary="validate a policy file; exit 1 naming each wrong field",
        description=CHECK_DESCRIPTION,
        examples=["gpuguard policy check examples/policy.yaml",
                  "kubectl get cm gpuguard-policy -n gpuguard -o jsonpath='{.data.policy\\.yaml}' | "
                  "gpuguard policy check -"],
    )
    check.add_argument("file", type=Path, help="policy YAML (or - for standard input)")
    check.set_defaults(func=check_command)
    schema = add_command(
        actions, "schema", summary="print the policy reference (Markdown)", description=SCHEMA_DESCRIPTION,
        examples=["gpuguard policy schema > docs/policy-reference.md"],
    )
    schema.set_defaults(func=schema_command)


def check_command(args: argparse.Namespace) -> int:
    source = "standard input" if str(args.file) == "-" else str(args.file)
    try:
        text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"{source}: cannot read: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        return 1
    try:
        policy = parse_policy(text)
    except PolicyError as error:
        count = len(error.issues)
        print(f"{source}: {count} problem{'s' if count != 1 else ''}:", file=sys.stderr)
        for issue in error.issues:
            print(f"  {located(source, issue)}", file=sys.stderr)
        return 1
    print(f"{source}: valid GpuPolicy ({len(policy.rules)} rules, mode {policy.mode})")
    return 0


def located(source: str, issue: PolicyIssue) -> str:
    """`policy.yaml:3:7: mode: ...`, or `policy.yaml: ...` when the problem has no position."""
    where = f"{source}:{issue.line}:{issue.column}" if issue.line is not None else source
    text = f"{issue.path}: {issue.message}" if issue.path else issue.message
    return f"{where}: {text}"


def schema_command(args: argparse.Namespace) -> int:
    from gpuguard.policy.schema import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0

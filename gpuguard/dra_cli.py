"""`gpuguard dra templates --policy FILE --namespace NS`: print the ResourceClaimTemplates gpuguard keeps there.

Offline, like `gpuguard mutate`: the policy file in, a YAML stream of `resource.k8s.io/v1` ResourceClaimTemplates out
(what the templates reconciler keeps in that namespace, and what `allocation: dra` pods are given claims from), ready
for `kubectl apply -f -`. Exit 1 when the policy cannot be read; an empty stream, with a note on standard error,
when nothing in that namespace is given GPUs through DRA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from gpuguard.policy.claim_templates import templates_for
from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy


def add_dra_parser(commands: Any) -> None:
    dra = commands.add_parser("dra", help="Dynamic Resource Allocation: what allocation: dra gives pods")
    actions = dra.add_subparsers(dest="dra_command", required=True, metavar="ACTION")
    templates = actions.add_parser("templates", help="print the ResourceClaimTemplates gpuguard keeps in a namespace")
    templates.add_argument("--policy", type=Path, help="policy YAML (default: the embedded DESIGN.md example)")
    templates.add_argument("--namespace", "-n", required=True, help="the namespace the templates are for")
    templates.set_defaults(func=templates_command)


def templates_command(args: argparse.Namespace) -> int:
    try:
        text = args.policy.read_text(encoding="utf-8") if args.policy else default_policy_text()
        policy = parse_policy(text)
    except OSError as error:
        print(f"gpuguard: cannot read {args.policy}: {error.strerror or error}", file=sys.stderr)
        return 1
    except PolicyError as error:
        print(f"gpuguard: the policy {args.policy} is invalid:\n{error}", file=sys.stderr)
        return 1
    found = templates_for(policy, args.namespace)
    if not found:
        print(f"gpuguard: no pod in namespace {args.namespace} is given GPUs through DRA (allocation: dra)",
              file=sys.stderr)
    sys.stdout.write(yaml.safe_dump_all(found, sort_keys=False) if found else "")
    return 0

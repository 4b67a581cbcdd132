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

from gpuguard.cli_support import add_command
from gpuguard.policy.claim_templates import templates_for
from gpuguard.policy.loading import PolicyError, default_policy_text, parse_policy


TEMPLATES_DESCRIPTION = """
Print, as a YAML stream of resource.k8s.io/v1 objects, the ResourceClaimTemplates gpuguard keeps in a namespace: one
per GPU shape the policy can give pods there under allocation: dra (the defaults, every rule that may match there,
and the counts and MIG profiles users may choose where userOverrides allows). Their names come from their content, so
the output is what the webhook's templates reconciler creates and what admitted pods' claims name. Offline: no
cluster is needed.

Exit status: 0 (an empty stream, with a note on standard error, when nothing there gets GPUs through DRA), 1 when
the policy cannot be read.
"""


def add_dra_parser(commands: Any) -> None:
    dra = commands.add_parser("dra", help="Dynamic Resource Allocation: what allocation: dra gives pods",
                              description="Show what the policy's allocation: dra gives pods.")
    actions = dra.add_subparsers(dest="dra_command", required=True, metavar="ACTION")
    templates = add_command(
        actions, "templates", summary="print the ResourceClaimTemplates gpuguard keeps in a namespace",
        description=TEMPLATES_DESCRIPTION,
        examples=["gpuguard dra templates --policy policy.yaml --namespace models",
                  "gpuguard dra templates --policy policy.yaml -n models | kubectl apply -f -"],
    )
    templates.add_argument("--policy", type=Path, help="policy YAML (default: the built-in policy)")
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

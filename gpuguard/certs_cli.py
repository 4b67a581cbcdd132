"""The arguments of `gpuguard certs ensure|check`; the work is in `gpuguard.certs`, imported only when run.

Registration stays light because every `gpuguard` subcommand is registered on each start: the node agent's
DaemonSet must not pay for the cryptography and Kubernetes client imports of a command it never runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gpuguard.cli_support import add_command


def _ensure(args: argparse.Namespace) -> int:
    from gpuguard.certs import ensure_command

    return ensure_command(args)


def _check(args: argparse.Namespace) -> int:
    from gpuguard.certs import check_command

    return check_command(args)


ENSURE_DESCRIPTION = """
Create the webhook's TLS Secret (a CA and a serving certificate for the Service's DNS names) if it is missing,
renew it when it is close to expiry or its names changed, and patch every named webhook configuration's caBundle to
its CA. Safe to run again: nothing changes when all is in order. The chart runs it as a hook Job when cert-manager
is not used.
"""

CHECK_DESCRIPTION = """
Report whether the webhook configurations' caBundles trust the CA of the TLS Secret (or of --ca-file), and whether
the serving certificate is valid for the Service's names and not expired. Exit status: 0 when they agree, 1 when not.
"""


def add_certs_parser(commands: Any) -> None:
    certs = commands.add_parser("certs", help="self-managed webhook certificates (Secret + caBundle)",
                                description="Create, renew and check the webhook's TLS Secret and caBundles.")
    actions = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    ensure = add_command(
        actions, "ensure", summary="create/renew the TLS Secret and patch the caBundles to its CA",
        description=ENSURE_DESCRIPTION,
        examples=["gpuguard certs ensure --in-cluster --namespace gpuguard --service-name gpuguard-webhook "
                  "--secret gpuguard-webhook-tls --mutating-webhook-configuration gpuguard "
                  "--validating-webhook-configuration gpuguard"],
    )
    _add_common_arguments(ensure)
    ensure.add_argument("--secret-label", action="append", default=[], metavar="KEY=VALUE",
                        help="label for a Secret this command creates (repeatable)")
    ensure.add_argument("--require-webhook-configurations", action="store_true",
                        help="exit 1 when a named configuration does not exist (default: skip it, as before install)")
    ensure.set_defaults(func=_ensure)
    check = add_command(
        actions, "check", summary="report whether the caBundles and the serving certificate agree",
        description=CHECK_DESCRIPTION,
        examples=["gpuguard certs check --namespace gpuguard --service-name gpuguard-webhook "
                  "--secret gpuguard-webhook-tls --validating-webhook-configuration gpuguard"],
    )
    _add_common_arguments(check)
    check.add_argument("--ca-file", type=Path, help="read the CA from this file instead of the Secret")
    check.add_argument("--cert-file", type=Path, help="with --ca-file: the serving certificate to check too")
    check.set_defaults(func=_check)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", required=True, help="namespace of the webhook Service and the Secret")
    parser.add_argument("--secret", default="", help="name of the TLS Secret (tls.crt, tls.key, ca.crt, ca.key)")
    parser.add_argument("--service-name", required=True, help="the webhook Service; its DNS names go in the SANs")
    parser.add_argument("--mutating-webhook-configuration", action="append", default=[], metavar="NAME",
                        help="a MutatingWebhookConfiguration whose webhooks must trust the CA (repeatable)")
    parser.add_argument("--validating-webhook-configuration", action="append", default=[], metavar="NAME",
                        help="a ValidatingWebhookConfiguration whose webhooks must trust the CA (repeatable)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: ~/.kube/config)")
    where.add_argument("--in-cluster", action="store_true", help="use the pod's service account")

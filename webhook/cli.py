"""`gpuguard webhook` (the HTTPS server) and the offline `gpuguard mutate` / `gpuguard validate`.

The server and offline modules are imported when their command runs, not when it is registered: `gpuguard` registers
every subcommand on each start, and the node agent's DaemonSet must not carry aiohttp for a command it never runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuguard.cli_support import add_command, add_listen_arguments, add_policy_argument, env_default, env_int
from webhook.settings import WebhookSettings

if TYPE_CHECKING:
    from gpuguard.web.tls import ReloadingCertificate


WEBHOOK_HELP = "run the mutating + validating admission webhook (HTTPS)"


WEBHOOK_DESCRIPTION = """
Serve /mutate and /validate to kube-apiserver over HTTPS: in-scope KServe predictor pods get their GPU, tolerations,
node selector, scheduler and Triton metrics annotations; bad GPU requests in pods and InferenceServices are denied,
warned or counted per the policy's mode, each with its fix. The policy file is re-read when it changes; a broken
version is refused and the last good one stays in force. /metrics is served on its own plain-HTTP port.

Exit status: 2 when the policy or the certificate cannot be used at start.
"""


def add_webhook_parser(commands: Any) -> None:
    add_webhook_arguments(add_command(
        commands, "webhook", summary=WEBHOOK_HELP, description=WEBHOOK_DESCRIPTION,
        examples=["gpuguard webhook --policy /etc/gpuguard/policy.yaml --tls-cert tls.crt --tls-key tls.key",
                  "gpuguard webhook --self-signed /tmp/gpuguard-tls --service-name gpuguard-webhook "
                  "--namespace gpuguard"],
    ))


def add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    add_listen_arguments(parser, port=8443)
    add_policy_argument(parser)
    parser.add_argument("--tls-cert", type=Path, default=env_default("TLS_CERT"), help="serving certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, default=env_default("TLS_KEY"), help="its private key (PEM)")
    parser.add_argument(
        "--self-signed", type=Path, metavar="DIR", default=env_default("SELF_SIGNED"),
        help="write ca.crt, tls.crt, tls.key into DIR if absent (reuse them if present) and serve those",
    )
    parser.add_argument("--service-name", default=env_default("SERVICE_NAME"), help="Service name, for the SANs")
    parser.add_argument("--namespace", default=env_default("NAMESPACE"), help="Service namespace, for the SANs")
    parser.add_argument(
        "--metrics-port", type=int, default=env_int("METRICS_PORT", 9090), help="plain-HTTP /metrics port; 0 disables"
    )
    parser.add_argument(
        "--on-internal-error", choices=["allow", "deny"], default=env_default("ON_INTERNAL_ERROR", "allow"),
        help="answer when the decision itself fails (default allow, with a warning)",
    )
    parser.set_defaults(func=run_webhook)


OFFLINE_INPUT = """
Reads every -f: a file, a directory (walked recursively for .yaml, .yml and .json files, like kubectl) or - for
standard input; `kind: List` items (what `kubectl get isvc -A -o yaml` prints) are checked one by one. Objects
gpuguard does not admit (other kinds or API versions, pods outside KServe predictors, gpuguard.io/skip) are listed as
skipped, never as ok.

Exit status: 0 every object would be admitted (skipped ones included), 1 the webhook would deny at least one, 2 an
input or the policy cannot be used (unreadable, not YAML, empty, not a Kubernetes object).
"""

OFFLINE_COMMANDS = {
    "mutate": (
        "print the objects as the webhook would admit them (YAML)",
        "Print each object as gpuguard's admission would leave it (a Pod as mutated; an InferenceService unchanged,"
        " with what its pods will get), each under comments listing the changes, the warnings and, for an object"
        " the webhook would deny, every problem: the same messages `validate` gives, from the same code.",
        ["gpuguard mutate -f examples/inferenceservices.yaml",
         "kubectl get isvc -A -o yaml | gpuguard mutate -f - --policy policy.yaml -o json"],
    ),
    "validate": (
        "print each object's decision, problems and fixes; exit 1 if the webhook would deny any",
        "Give each object's admission decision (ok, DENIED, WARN, AUDIT or skip) with its rule, and under it every"
        " problem with its fix and every warning the webhook would give.",
        ["gpuguard validate -f manifests/ -f extra.yaml --policy policy.yaml",
         "gpuguard validate -f isvc.yaml -o json | jq '.items[] | select(.decision == \"denied\")'"],
    ),
}


def add_offline_parsers(commands: Any) -> None:
    for name, func, output in (("mutate", _mutate, "yaml"), ("validate", _validate, "text")):
        summary, description, examples = OFFLINE_COMMANDS[name]
        parser = add_command(commands, name, summary=summary, description=f"{description}\n\n{OFFLINE_INPUT}",
                             examples=examples)
        parser.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
                            help="manifest file, directory (recursive) or - for stdin; repeat for more")
        add_policy_argument(parser, reloaded=False)
        parser.add_argument("-n", "--namespace", default="default", help="namespace for objects that do not set one")
        parser.add_argument("-o", "--output", choices=[output, "json"], default=output,
                            help=f"{output} (default) or json: one entry per object and the counts, for tools")
        parser.set_defaults(func=func)


def _mutate(args: argparse.Namespace) -> int:
    from webhook.offline import mutate_command

    return mutate_command(args)


def _validate(args: argparse.Namespace) -> int:
    from webhook.offline import validate_command

    return validate_command(args)


def settings_from_args(args: argparse.Namespace) -> WebhookSettings:
    return WebhookSettings(
        host=args.host,
        port=args.port,
        policy_path=args.policy,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        self_signed_dir=args.self_signed,
        service_name=args.service_name,
        namespace=args.namespace,
        metrics_port=args.metrics_port,
        on_internal_error=args.on_internal_error,
    )


def run_webhook(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector

    from gpuguard.policy.loading import PolicyError
    from gpuguard.web import serving
    from gpuguard.web.policy_source import PolicySource
    from webhook.app import create_app

    settings = settings_from_args(args)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    try:
        policy = PolicySource(settings.policy_path, registry=registry)
        certificate = _certificate(settings)
    except PolicyError as error:
        print(f"gpuguard webhook: the policy {settings.policy_path} is invalid:\n{error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"gpuguard webhook: {error}", file=sys.stderr)
        return 2
    app = create_app(settings, policy=policy, registry=registry, certificate=certificate)
    listeners = [serving.Listener(app, settings.host, settings.port, certificate.context, "admission")]
    if settings.metrics_port:
        listeners.append(serving.Listener(serving.metrics_app(registry), settings.host, settings.metrics_port,
                                          name="metrics"))
    serving.run(listeners)
    return 0


def _certificate(settings: WebhookSettings) -> ReloadingCertificate:
    """kube-apiserver only calls webhooks over HTTPS, so a certificate is required one way or the other."""
    from gpuguard.web.tls import ReloadingCertificate, default_sans, ensure_self_signed

    if settings.self_signed_dir is not None:
        files = ensure_self_signed(settings.self_signed_dir, default_sans(settings.service_name, settings.namespace))
        return ReloadingCertificate(files.cert, files.key)
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("give --tls-cert and --tls-key, or --self-signed DIR (kube-apiserver requires HTTPS)")
    return ReloadingCertificate(settings.tls_cert, settings.tls_key)

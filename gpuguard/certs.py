"""The work behind `gpuguard certs ensure|check` (arguments in `gpuguard.certs_cli`): self-managed webhook certificates, run by the Helm chart's hook Jobs and CronJob.

`ensure` makes the TLS Secret hold a CA and a serving certificate for the webhook Service (reused while good,
reissued from the same CA when near expiry or when the Service's names change) and copies the CA into the
caBundle of the webhook configurations. The chart runs it before install/upgrade (the Secret must exist before the
webhook pods mount it), after install/upgrade (the configurations exist by then) and daily (renewal and repair),
so the caBundle equals the serving certificate's CA across `helm upgrade`, restarts and renewals.

`check` changes nothing: it reports whether every webhook trusts the CA and whether the serving certificate chains
to it, carries the Service's names and is not about to expire. `helm test` runs it.

The certificates are built by `gpuguard.web.tls` (the same code, and so the same reuse and reissue rules, as the
webhook's `--self-signed DIR`); the Kubernetes side is `gpuguard.k8s.webhook_certs`. This module only wires them.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from gpuguard.k8s.client import ClusterConfigError, api_client
from gpuguard.k8s.webhook_certs import (
    SECRET_KEYS,
    CertBundle,
    EnsureReport,
    Issuer,
    WebhookCertError,
    WebhookTarget,
    ensure_webhook_certs,
    read_bundle,
    read_ca_bundles,
)
from gpuguard.web import tls

Clock = Callable[[], datetime.datetime]


class CertificateError(ValueError):
    """The Secret's certificates cannot be used or reissued; the message says how to recover."""


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def tls_issuer(sans: Sequence[str], *, clock: Clock = _utc_now) -> Issuer:
    """An `Issuer` applying `tls.ensure_self_signed`'s rules to a Secret's contents instead of a directory."""

    def issue(current: CertBundle | None) -> CertBundle:
        with tempfile.TemporaryDirectory(prefix="gpuguard-certs-") as temp:
            directory = Path(temp)
            if current is not None:
                _write_bundle(directory, current)
            try:
                tls.ensure_self_signed(directory, sans, now=clock())
            except ValueError as error:
                raise CertificateError(
                    f"the Secret's CA cannot be used ({error}); delete the Secret and run `gpuguard certs ensure` "
                    "again to start from a new CA (the caBundles follow it)"
                ) from None
            fresh = _read_bundle(directory)
        return current if current == fresh else fresh

    return issue


def _write_bundle(directory: Path, bundle: CertBundle) -> None:
    for attr, name in SECRET_KEYS.items():
        (directory / name).write_bytes(getattr(bundle, attr))


def _read_bundle(directory: Path) -> CertBundle:
    return CertBundle(**{attr: (directory / name).read_bytes() for attr, name in SECRET_KEYS.items()})


def certificate_problems(
    ca_pem: bytes, cert_pem: bytes | None, sans: Sequence[str], *, now: datetime.datetime
) -> list[str]:
    """What is wrong with a CA and the serving certificate it should have signed (empty: nothing)."""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        chain = x509.load_pem_x509_certificates(cert_pem) if cert_pem is not None else []
    except ValueError as error:
        return [f"not a PEM certificate: {error}"]
    problems = _validity_problems("the CA", ca, now=now, renew_before=datetime.timedelta(0))
    if chain:
        cert = chain[0]
        problems += _validity_problems("the serving certificate", cert, now=now, renew_before=tls.RENEW_BEFORE)
        problems += _chain_problems(ca, chain) + _name_problems(cert, sans)
    return problems


def _validity_problems(
    what: str, cert: x509.Certificate, *, now: datetime.datetime, renew_before: datetime.timedelta
) -> list[str]:
    if cert.not_valid_after_utc <= now:
        return [f"{what} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"]
    if cert.not_valid_after_utc - now <= renew_before:
        return [f"{what} expires at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC and is due for renewal"]
    return []


def _chain_problems(ca: x509.Certificate, chain: Sequence[x509.Certificate]) -> list[str]:
    """The serving certificate, through any intermediates sent with it (cert-manager appends them), must lead to
    the CA; kube-apiserver trusts nothing else."""
    try:
        for certificate, issuer in zip(chain, [*chain[1:], ca]):
            if certificate != ca:
                certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return ["the serving certificate was not issued by the CA in the caBundle: kube-apiserver would refuse it"]
    return []


def _name_problems(cert: x509.Certificate, sans: Sequence[str]) -> list[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ["the serving certificate has no subjectAltName: kube-apiserver rejects CN-only certificates"]
    missing = [san for san in sans if san not in names.get_values_for_type(x509.DNSName)]
    return [f"the serving certificate lacks the name(s) {', '.join(missing)}"] if missing else []


def fingerprint(ca_pem: bytes) -> str:
    """A short, stable name for a CA in log lines: the first 16 hex digits of its DER's SHA-256."""
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:16]


def _target(args: argparse.Namespace) -> WebhookTarget:
    labels = dict(item.partition("=")[::2] for item in getattr(args, "secret_label", []))
    return WebhookTarget(
        namespace=args.namespace,
        secret_name=args.secret,
        mutating=tuple(args.mutating_webhook_configuration),
        validating=tuple(args.validating_webhook_configuration),
        secret_labels=labels,
    )


def ensure_command(args: argparse.Namespace) -> int:
    if not args.secret:
        print("gpuguard certs ensure: --secret is required", file=sys.stderr)
        return 2
    target = _target(args)
    sans = tls.default_sans(args.service_name, args.namespace)
    try:
        api = api_client(kubeconfig=args.kubeconfig, in_cluster=args.in_cluster)
        report = ensure_webhook_certs(api, target, issue=tls_issuer(sans))
    except (ClusterConfigError, WebhookCertError, CertificateError) as error:
        print(f"gpuguard certs ensure: {error}", file=sys.stderr)
        return 2
    for line in describe(report, target):
        print(line)
    if report.missing and args.require_webhook_configurations:
        print("gpuguard certs ensure: a webhook configuration is missing; is the chart installed?", file=sys.stderr)
        return 1
    return 0


def describe(report: EnsureReport, target: WebhookTarget) -> list[str]:
    """One line per object, saying what was done and why it matters."""
    ca = fingerprint(report.bundle.ca_cert)
    expires = x509.load_pem_x509_certificate(report.bundle.cert).not_valid_after_utc
    lines = [f"Secret {target.namespace}/{target.secret_name}: {report.secret} (CA {ca}, serving certificate "
             f"valid until {expires:%Y-%m-%d})"]
    for result in report.configurations:
        what = {"patched": f"caBundle set to CA {ca} on {result.webhooks} webhook(s)",
                "current": f"caBundle already CA {ca}",
                "missing": "not found (skipped; it is patched once it exists)"}[result.outcome]
        lines.append(f"{result.kind} {result.name}: {what}")
    return lines


def check_command(args: argparse.Namespace) -> int:
    sans = tls.service_names(args.service_name, args.namespace)
    try:
        api = api_client(kubeconfig=args.kubeconfig, in_cluster=args.in_cluster)
        ca_pem, cert_pem = _check_inputs(api, args)
        problems = certificate_problems(ca_pem, cert_pem, sans, now=_utc_now())
        problems += _ca_bundle_problems(api, _target(args), ca_pem)
    except (ClusterConfigError, WebhookCertError, CertificateError, OSError) as error:
        print(f"gpuguard certs check: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"problem: {problem}")
    if not problems:
        print(f"ok: every webhook trusts CA {fingerprint(ca_pem)}"
              + (", which issued the serving certificate" if cert_pem else ""))
    return 1 if problems else 0


def _check_inputs(api: Any, args: argparse.Namespace) -> tuple[bytes, bytes | None]:
    if args.ca_file is not None:
        return args.ca_file.read_bytes(), args.cert_file.read_bytes() if args.cert_file else None
    if not args.secret:
        raise CertificateError("give --secret NAME or --ca-file FILE")
    bundle = read_bundle(api, args.namespace, args.secret)
    if bundle is None:
        raise CertificateError(f"Secret {args.namespace}/{args.secret} does not exist or lacks one of "
                               f"{', '.join(SECRET_KEYS.values())}; run `gpuguard certs ensure`")
    return bundle.ca_cert, bundle.cert


def _ca_bundle_problems(api: Any, target: WebhookTarget, ca_pem: bytes) -> list[str]:
    expected = CertBundle(ca_pem, b"", b"", b"").ca_bundle
    problems = []
    for kind, name in target.configurations():
        bundles = read_ca_bundles(api, kind, name)
        if bundles is None:
            problems.append(f"{kind} {name} does not exist")
            continue
        problems += [f"{kind} {name}: webhook {webhook} does not trust the CA "
                     f"({'no caBundle' if not value else 'a different caBundle'})"
                     for webhook, value in bundles.items() if value != expected]
    return problems

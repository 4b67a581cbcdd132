"""Self-managed webhook certificates: one TLS Secret as the source of truth, and caBundles that follow it.

kube-apiserver trusts the webhook's serving certificate only through `clientConfig.caBundle` in the Mutating and
Validating webhook configurations. Users of other webhooks keep hitting the two falling out of step after an
upgrade or a renewal (kserve/kserve#1359, #3187), so gpuguard keeps the CA and the serving certificate in one Secret
(`tls.crt`, `tls.key`, `ca.crt`, `ca.key`) that the webhook pods mount, and copies that Secret's `ca.crt` into
every webhook of its configurations:

- the Secret is read; an `Issuer` decides whether its certificates are still good (then they are reused,
  byte for byte) or returns new ones (a new server certificate from the same CA when it nears expiry or its names
  changed, a new CA only when there is none);
- writes use optimistic concurrency (create, or replace at the read `resourceVersion`); a conflict means another
  writer got there first, so the Secret is read again and the decision redone;
- each webhook whose caBundle differs gets a JSON Patch that only adds `clientConfig.caBundle`, guarded by a `test`
  of the webhook's name so a concurrent reordering cannot patch the wrong entry. Nothing else is touched.

This module is the Kubernetes I/O only. It must not generate keys or judge certificates: the `Issuer` does
(`gpuguard.certs` wires in the builders of `gpuguard.web.tls`), which keeps this package independent of
`gpuguard.web`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

JsonDict = dict[str, Any]
ConfigurationKind = Literal["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
SecretOutcome = Literal["created", "reissued", "reused"]
PatchOutcome = Literal["patched", "current", "missing"]

SECRET_KEYS = {"ca_cert": "ca.crt", "ca_key": "ca.key", "cert": "tls.crt", "key": "tls.key"}
"""Secret data keys: `tls.crt`/`tls.key` are what type kubernetes.io/tls requires; `ca.crt` is cert-manager's name."""

JSON_PATCH = "application/json-patch+json"


class WebhookCertError(RuntimeError):
    """The Secret or a webhook configuration could not be read or written; the message says which and why."""


@dataclass(frozen=True, slots=True)
class CertBundle:
    """PEM bytes of the CA and the serving certificate it signed."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def secret_data(self) -> dict[str, str]:
        return {wire: base64.b64encode(getattr(self, attr)).decode() for attr, wire in SECRET_KEYS.items()}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> CertBundle | None:
        """The bundle in a Secret's `data`, or None when a key is missing or not base64."""
        data = data or {}
        try:
            values = {attr: base64.b64decode(data[wire], validate=True) for attr, wire in SECRET_KEYS.items()}
        except (KeyError, ValueError):
            return None
        return cls(**values)

    @property
    def ca_bundle(self) -> str:
        """The value kube-apiserver expects in `clientConfig.caBundle`: base64 of the CA's PEM."""
        return base64.b64encode(self.ca_cert).decode()


class Issuer(Protocol):
    def __call__(self, current: CertBundle | None, /) -> CertBundle:
        """Return `current` itself when it is still good, else a new bundle (from the same CA when it is usable)."""
        ...


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """Where the certificates live and which webhook configurations must trust them."""

    namespace: str
    secret_name: str
    mutating: tuple[str, ...] = ()
    validating: tuple[str, ...] = ()
    secret_labels: Mapping[str, str] = field(default_factory=dict)

    def configurations(self) -> list[tuple[ConfigurationKind, str]]:
        return [*(("MutatingWebhookConfiguration", n) for n in self.mutating),
                *(("ValidatingWebhookConfiguration", n) for n in self.validating)]


@dataclass(frozen=True, slots=True)
class ConfigurationResult:
    kind: ConfigurationKind
    name: str
    outcome: PatchOutcome
    webhooks: int = 0
    """How many webhooks of the configuration had their caBundle changed."""


@dataclass(frozen=True, slots=True)
class EnsureReport:
    bundle: CertBundle
    secret: SecretOutcome
    configurations: tuple[ConfigurationResult, ...]

    @property
    def missing(self) -> tuple[ConfigurationResult, ...]:
        return tuple(result for result in self.configurations if result.outcome == "missing")


def ensure_webhook_certs(
    api: client.ApiClient, target: WebhookTarget, *, issue: Issuer, attempts: int = 5
) -> EnsureReport:
    """Make the Secret hold good certificates and every named webhook trust its CA; configurations not found yet
    are reported as `missing` (before `helm install` created them), never created here."""
    bundle, outcome = ensure_secret(api, target, issue=issue, attempts=attempts)
    results = tuple(
        sync_ca_bundle(api, kind, name, ca_bundle=bundle.ca_bundle, attempts=attempts)
        for kind, name in target.configurations()
    )
    return EnsureReport(bundle, outcome, results)


def ensure_secret(
    api: client.ApiClient, target: WebhookTarget, *, issue: Issuer, attempts: int = 5
) -> tuple[CertBundle, SecretOutcome]:
    core = client.CoreV1Api(api)
    for _ in range(attempts):
        secret = read_secret(core, target.namespace, target.secret_name)
        current = CertBundle.from_secret_data(secret.get("data")) if secret else None
        bundle = issue(current)
        if secret is not None and bundle == current:
            return bundle, "reused"
        if _write_secret(core, target, secret, bundle):
            return bundle, "created" if secret is None else "reissued"
    raise WebhookCertError(
        f"Secret {target.namespace}/{target.secret_name} changed under every one of {attempts} attempts to write it; "
        "is another process rewriting it?"
    )


def read_secret(core: client.CoreV1Api, namespace: str, name: str) -> JsonDict | None:
    response = _call(f"read Secret {namespace}/{name}", core.read_namespaced_secret, name, namespace,
                     _preload_content=False)
    return None if response is None else _json(response)


def read_bundle(api: client.ApiClient, namespace: str, name: str) -> CertBundle | None:
    """The certificates in the Secret; None when it does not exist or lacks one of the four keys."""
    secret = read_secret(client.CoreV1Api(api), namespace, name)
    return CertBundle.from_secret_data(secret.get("data")) if secret else None


def _write_secret(core: client.CoreV1Api, target: WebhookTarget, existing: JsonDict | None, bundle: CertBundle) -> bool:
    """Create or replace (at the read resourceVersion); False when another writer got there first."""
    where = f"Secret {target.namespace}/{target.secret_name}"
    # Plain dicts go out as they are (the client serializes them unchanged); typed as Any for its V1Secret stubs.
    body: Any = new_secret(target, bundle) if existing is None else replaced_secret(existing, bundle)
    try:
        if existing is None:
            core.create_namespaced_secret(target.namespace, body, _preload_content=False)
        else:
            core.replace_namespaced_secret(target.secret_name, target.namespace, body, _preload_content=False)
    except ApiException as error:
        if error.status == 409:  # AlreadyExists on create, Conflict on a stale resourceVersion
            return False
        raise WebhookCertError(f"cannot write {where}: {_reason(error)}") from None
    return True


def new_secret(target: WebhookTarget, bundle: CertBundle) -> JsonDict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": target.secret_name, "namespace": target.namespace, "labels": dict(target.secret_labels)},
        "type": "kubernetes.io/tls",
        "data": bundle.secret_data(),
    }


def replaced_secret(existing: JsonDict, bundle: CertBundle) -> JsonDict:
    """The existing Secret with our four keys replaced; its metadata (resourceVersion included) and other keys kept."""
    return {**existing, "data": {**(existing.get("data") or {}), **bundle.secret_data()}}


def sync_ca_bundle(
    api: client.ApiClient, kind: ConfigurationKind, name: str, *, ca_bundle: str, attempts: int = 5
) -> ConfigurationResult:
    admission = client.AdmissionregistrationV1Api(api)
    read, patch = _configuration_calls(admission, kind)
    for _ in range(attempts):
        response = _call(f"read {kind} {name}", read, name, _preload_content=False)
        if response is None:
            return ConfigurationResult(kind, name, "missing")
        operations = ca_bundle_patch(_json(response), ca_bundle)
        if not operations:
            return ConfigurationResult(kind, name, "current")
        try:
            patch(name, operations, _content_type=JSON_PATCH, _preload_content=False)
        except ApiException as error:
            if error.status in (409, 422):  # the test op failed: the webhooks changed since the read
                continue
            raise WebhookCertError(f"cannot patch the caBundle of {kind} {name}: {_reason(error)}") from None
        return ConfigurationResult(kind, name, "patched", webhooks=len(operations) // 2)
    raise WebhookCertError(f"{kind} {name} changed under every one of {attempts} attempts to patch its caBundle")


def ca_bundle_patch(configuration: JsonDict, ca_bundle: str) -> list[JsonDict]:
    """JSON Patch operations that set every webhook's caBundle to `ca_bundle`; empty when all already have it.

    Each `add` (which also replaces) is preceded by a `test` of that webhook's name: if the list was reordered
    since it was read, kube-apiserver rejects the whole patch instead of trusting the wrong webhook.
    """
    operations: list[JsonDict] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        if (webhook.get("clientConfig") or {}).get("caBundle") == ca_bundle:
            continue
        operations.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": ca_bundle})
    return operations


def read_ca_bundles(api: client.ApiClient, kind: ConfigurationKind, name: str) -> dict[str, str] | None:
    """Each webhook's caBundle (webhook name -> base64 PEM, "" when unset); None when the configuration is missing."""
    read, _ = _configuration_calls(client.AdmissionregistrationV1Api(api), kind)
    response = _call(f"read {kind} {name}", read, name, _preload_content=False)
    if response is None:
        return None
    webhooks = _json(response).get("webhooks") or []
    return {str(w.get("name")): str((w.get("clientConfig") or {}).get("caBundle") or "") for w in webhooks}


def _configuration_calls(admission: client.AdmissionregistrationV1Api, kind: ConfigurationKind) -> tuple[Any, Any]:
    if kind == "MutatingWebhookConfiguration":
        return admission.read_mutating_webhook_configuration, admission.patch_mutating_webhook_configuration
    return admission.read_validating_webhook_configuration, admission.patch_validating_webhook_configuration


def _call(what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the client; None on 404, `WebhookCertError` naming `what` on any other failure."""
    try:
        return method(*args, **kwargs)
    except ApiException as error:
        if error.status == 404:
            return None
        raise WebhookCertError(f"cannot {what}: {_reason(error)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:  # refused, DNS, TLS, timeouts
        raise WebhookCertError(f"cannot {what}: {error}") from None


def _json(response: Any) -> JsonDict:
    document = json.loads(response.data)
    if not isinstance(document, dict):
        raise WebhookCertError(f"expected a JSON object from the API server, got {type(document).__name__}")
    return document


def _reason(error: ApiException) -> str:
    """The API server's own message (a metav1.Status), with a hint for the usual RBAC mistake."""
    try:
        message = str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        message = str(error.reason)
    hint = " (check the ServiceAccount's RBAC)" if error.status == 403 else ""
    return f"HTTP {error.status}: {message}{hint}"

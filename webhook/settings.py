"""Webhook settings: grouped, typed, documented, passed explicitly (no module-level configuration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpuguard.web.limits import ConnectionLimits

MAX_BODY_BYTES = 3 * 1024 * 1024
"""Kubernetes objects can reach 1.5 MiB (etcd's limit); an AdmissionReview carries object and oldObject."""


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    host: str = "0.0.0.0"
    port: int = 8443
    policy_path: Path | None = None
    """None: the embedded default policy."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    self_signed_dir: Path | None = None
    """Generate (or reuse) a CA and server certificate here instead of --tls-cert/--tls-key."""
    service_name: str | None = None
    namespace: str | None = None
    metrics_port: int = 9090
    """Plain-HTTP /metrics port; 0 disables it."""
    on_internal_error: Literal["allow", "deny"] = "allow"
    """What to answer when the decision itself fails (a bug): allow keeps pods flowing, as kube-apiserver would with
    failurePolicy Ignore; deny holds them back. Either way the reply carries a message and the uid is logged."""
    reload_interval: float = 2.0
    """Seconds between checks of the policy and certificate files."""
    max_body_bytes: int = MAX_BODY_BYTES
    connections: ConnectionLimits = ConnectionLimits()
    """Timeouts and the connection bound of both listeners (the metrics port holds at most 64 connections)."""
    claim_templates: bool = False
    """Keep gpuguard's ResourceClaimTemplates in every namespace in scope (policies with `allocation: dra`); needs
    `kubeconfig` or `in_cluster`. Replicas elect one writer through a Lease in `namespace`."""
    kubeconfig: Path | None = None
    in_cluster: bool = False
    exclude_namespaces: tuple[str, ...] = ()
    """Namespaces outside the webhook's scope (besides `namespace` and kube-system), as its namespaceSelector says."""
    identity: str = ""
    """This replica's name in the Lease (the pod name)."""

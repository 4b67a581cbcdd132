"""The webhook's Prometheus metrics, registered on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Include kube-apiserver's own latency edges (5, 25, 100 ms in apiserver_admission_webhook_admission_duration_seconds)
# so the two histograms can be compared bucket for bucket.
KINDS = frozenset({"Pod", "InferenceService"})
"""The kinds the webhook decides on; any other kind a request names is counted as `other`, so a client cannot grow
the label set (and the server's memory) by inventing kinds."""
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._admission_children: dict[tuple[str, ...], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self.admissions = Counter(
            "gpuguard_webhook_admissions",
            "Admission requests answered, by endpoint, operation, object kind, decision and policy rule",
            ["endpoint", "operation", "kind", "decision", "rule"],
            registry=registry,
        )
        self.duration = Histogram(
            "gpuguard_webhook_admission_duration_seconds",
            "Time from reading the request body to the encoded reply, in seconds",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bad_requests = Counter(
            "gpuguard_webhook_bad_requests",
            "Bodies refused with HTTP 400 (not JSON, or not an AdmissionReview)",
            ["endpoint"],
            registry=registry,
        )
        self.certificate_reloads = Counter(
            "gpuguard_webhook_certificate_reloads",
            "Serving certificate reloads after the files changed on disk",
            registry=registry,
        )
        self.certificate_expiry = Gauge(
            "gpuguard_webhook_certificate_expiry_timestamp_seconds",
            "Unix time at which the serving certificate that new connections get expires",
            registry=registry,
        )

    def admitted(self, endpoint: str, operation: str, kind: str, decision: str, rule: str, seconds: float) -> None:
        """Count one answered request and its latency.

        Labelled children are looked up once and kept: `labels()` with five labels costs more than the rest of
        this call, and the label sets are few (endpoints x operations x kinds x decisions x rules).
        """
        key = (endpoint, operation, kind if kind in KINDS else "other", decision, rule)
        counter = self._admission_children.get(key)
        if counter is None:
            counter = self._admission_children[key] = self.admissions.labels(*key)
        counter.inc()
        timer = self._duration_children.get(endpoint)
        if timer is None:
            timer = self._duration_children[endpoint] = self.duration.labels(endpoint)
        timer.observe(seconds)

"""Self-managed certificates: the Secret and the caBundles stay in step across installs, upgrades, renewals and races.

The real kubernetes client talks HTTP to an in-test aiohttp server that emulates the Secret and webhook
configuration endpoints with kube-apiserver's own JSON (tests/chart/fake_apiserver.py). The webhook configurations
it starts with are the ones the chart renders, so the patches are applied to the real shape of our objects.
"""

from __future__ import annotations

import base64
import datetime
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonpatch
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from gpuguard.certs import CertificateError, certificate_problems, tls_issuer
from gpuguard.cli import main
from gpuguard.k8s.client import api_client
from gpuguard.k8s.webhook_certs import (
    CertBundle,
    EnsureReport,
    WebhookCertError,
    WebhookTarget,
    ca_bundle_patch,
    ensure_webhook_certs,
)
from gpuguard.web.tls import build_ca, build_server_cert, default_sans, service_names
from tests.chart.fake_apiserver import FakeApiServer, serving, write_kubeconfig
from tests.chart.helm import NAMESPACE, ROOT, Obj, Rendered, render, render_with_existing_secret

SECRET = "gpuguard-webhook-tls"
SERVICE = "gpuguard-webhook"
CONFIGURATION = "gpuguard-webhook"
TARGET = WebhookTarget(namespace=NAMESPACE, secret_name=SECRET, mutating=(CONFIGURATION,),
                       validating=(CONFIGURATION,), secret_labels={"app.kubernetes.io/component": "webhook"})
SANS = default_sans(SERVICE, NAMESPACE)
NOW = datetime.datetime.now(datetime.timezone.utc)


def chart_configurations() -> list[Obj]:
    rendered = render()
    return rendered.of_kind("MutatingWebhookConfiguration") + rendered.of_kind("ValidatingWebhookConfiguration")


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    for configuration in chart_configurations():
        server.put(configuration)
    with serving(server):
        yield server


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", apiserver.url)


def ensure(kubeconfig: Path, *, now: datetime.datetime = NOW, sans: list[str] = SANS) -> EnsureReport:
    return ensure_webhook_certs(api_client(kubeconfig=kubeconfig), TARGET, issue=tls_issuer(sans, clock=lambda: now))


def stored_bundle(server: FakeApiServer) -> CertBundle:
    secret = server.get("secrets", SECRET, NAMESPACE)
    assert secret is not None
    bundle = CertBundle.from_secret_data(secret["data"])
    assert bundle is not None
    return bundle


def ca_bundles(server: FakeApiServer) -> dict[str, str]:
    return {hook["name"]: hook["clientConfig"].get("caBundle", "")
            for resource in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
            for hook in (server.get(resource, CONFIGURATION) or {"webhooks": []})["webhooks"]}


def test_the_first_run_creates_the_secret_and_every_webhook_trusts_its_ca(apiserver: FakeApiServer,
                                                                         kubeconfig: Path) -> None:
    report = ensure(kubeconfig)
    bundle = stored_bundle(apiserver)
    secret = apiserver.get("secrets", SECRET, NAMESPACE)
    assert report.secret == "created" and secret is not None
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/component": "webhook"}
    assert [(r.kind, r.outcome, r.webhooks) for r in report.configurations] == [
        ("MutatingWebhookConfiguration", "patched", 2), ("ValidatingWebhookConfiguration", "patched", 4)]
    expected = base64.b64encode(bundle.ca_cert).decode()
    assert ca_bundles(apiserver) == {"mutate.pods.gpuguard.io": expected, "validate.pods.gpuguard.io": expected,
                                     "mutate.llm-pods.gpuguard.io": expected, "validate.llm-pods.gpuguard.io": expected,
                                     "validate.inferenceservices.gpuguard.io": expected,
                                     "validate.llminferenceservices.gpuguard.io": expected}
    assert certificate_problems(bundle.ca_cert, bundle.cert, service_names(SERVICE, NAMESPACE), now=NOW) == []


def test_patches_touch_only_the_ca_bundle_and_are_guarded_by_the_webhook_name(apiserver: FakeApiServer,
                                                                             kubeconfig: Path) -> None:
    before = {hook["name"]: hook for config in chart_configurations() for hook in config["webhooks"]}
    ensure(kubeconfig)
    patches = [r for r in apiserver.writes() if r.method == "PATCH"]
    assert {r.content_type for r in patches} == {"application/json-patch+json"}
    for request in patches:
        assert [op["op"] for op in request.body] == ["test", "add"] * (len(request.body) // 2)
        assert all(op["path"].endswith(("/name", "/clientConfig/caBundle")) for op in request.body)
    after = {hook["name"]: hook for resource in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
             for hook in (apiserver.get(resource, CONFIGURATION) or {})["webhooks"]}
    for name, hook in after.items():
        hook["clientConfig"].pop("caBundle")
        assert hook == before[name], f"{name} changed beyond its caBundle"


def test_a_second_run_reuses_everything_and_writes_nothing(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    ensure(kubeconfig)
    first = stored_bundle(apiserver)
    writes = len(apiserver.writes())
    report = ensure(kubeconfig)
    assert report.secret == "reused" and {r.outcome for r in report.configurations} == {"current"}
    assert stored_bundle(apiserver) == first
    assert len(apiserver.writes()) == writes


def test_a_certificate_near_expiry_is_reissued_from_the_same_ca_so_the_ca_bundle_stays(
    apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    ensure(kubeconfig)
    first = stored_bundle(apiserver)
    later = NOW + datetime.timedelta(days=340)  # one-year certificate, renewed within 30 days of its end
    report = ensure(kubeconfig, now=later)
    renewed = stored_bundle(apiserver)
    assert report.secret == "reissued"
    assert renewed.ca_cert == first.ca_cert and renewed.cert != first.cert
    assert {r.outcome for r in report.configurations} == {"current"}, "same CA: no caBundle change, no patch"
    assert certificate_problems(renewed.ca_cert, renewed.cert, service_names(SERVICE, NAMESPACE), now=later) == []


def test_a_renamed_service_gets_a_certificate_with_the_new_names_from_the_same_ca(
    apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    ensure(kubeconfig)
    first = stored_bundle(apiserver)
    report = ensure(kubeconfig, sans=default_sans("gpuguard-admission", NAMESPACE))
    renewed = stored_bundle(apiserver)
    assert report.secret == "reissued" and renewed.ca_cert == first.ca_cert
    assert certificate_problems(renewed.ca_cert, renewed.cert, service_names("gpuguard-admission", NAMESPACE),
                                now=NOW) == []


def test_a_ca_bundle_overwritten_by_an_upgrade_is_restored_and_only_that_webhook_is_patched(
    apiserver: FakeApiServer, kubeconfig: Path
) -> None:
    ensure(kubeconfig)
    validating = apiserver.get("validatingwebhookconfigurations", CONFIGURATION)
    assert validating is not None
    del validating["webhooks"][1]["clientConfig"]["caBundle"]  # e.g. re-applied by hand without it
    report = ensure(kubeconfig)
    assert [(r.outcome, r.webhooks) for r in report.configurations] == [("current", 0), ("patched", 1)]
    assert len(set(ca_bundles(apiserver).values())) == 1


def test_before_install_missing_configurations_are_reported_and_never_created(tmp_path: Path) -> None:
    with serving(FakeApiServer()) as empty:
        report = ensure(write_kubeconfig(tmp_path / "kubeconfig", empty.url))
        assert report.secret == "created"
        assert [r.outcome for r in report.configurations] == ["missing", "missing"]
        assert [r.path for r in empty.writes()] == [f"/api/v1/namespaces/{NAMESPACE}/secrets"]


def test_two_replicas_racing_to_create_the_secret_end_up_with_the_winners_ca(apiserver: FakeApiServer,
                                                                            kubeconfig: Path) -> None:
    winner = tls_issuer(SANS)(None)
    apiserver.fail_next("POST", "secrets", 409, concurrent_write={
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": NAMESPACE}, "data": winner.secret_data()})
    report = ensure(kubeconfig)
    assert report.secret == "reused"
    assert stored_bundle(apiserver) == winner
    assert set(ca_bundles(apiserver).values()) == {winner.ca_bundle}


def test_a_stale_resource_version_is_retried_on_a_fresh_read(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    ensure(kubeconfig)
    apiserver.fail_next("PUT", "secrets", 409)
    report = ensure(kubeconfig, now=NOW + datetime.timedelta(days=340))
    assert report.secret == "reissued"
    assert [r.method for r in apiserver.writes() if "secrets" in r.path] == ["POST", "PUT", "PUT"]


def test_a_patch_computed_before_a_reorder_is_refused_rather_than_trusting_the_wrong_webhook() -> None:
    (validating,) = [c for c in chart_configurations() if c["kind"] == "ValidatingWebhookConfiguration"]
    operations = ca_bundle_patch(validating, "Q0E=")
    reordered = {**validating, "webhooks": list(reversed(validating["webhooks"]))}
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(reordered, operations)


def test_a_refused_patch_is_retried_after_reading_the_configuration_again(apiserver: FakeApiServer,
                                                                         kubeconfig: Path) -> None:
    apiserver.fail_next("PATCH", "validatingwebhookconfigurations", 422)
    report = ensure(kubeconfig)
    assert [r.outcome for r in report.configurations] == ["patched", "patched"]
    assert len(set(ca_bundles(apiserver).values())) == 1


def test_an_rbac_refusal_names_the_object_and_the_likely_fix(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    apiserver.fail_next("GET", "secrets", 403)
    with pytest.raises(WebhookCertError) as error:
        ensure(kubeconfig)
    assert f"Secret {NAMESPACE}/{SECRET}" in str(error.value)
    assert "HTTP 403" in str(error.value) and "RBAC" in str(error.value)


def test_an_unreadable_ca_is_refused_with_the_way_to_recover(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    broken = CertBundle(b"not a certificate", b"not a key", b"x", b"y")
    apiserver.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE},
                   "type": "kubernetes.io/tls", "data": broken.secret_data()})
    with pytest.raises(CertificateError, match="delete the Secret"):
        ensure(kubeconfig)


def test_replacing_the_secret_keeps_its_metadata_and_foreign_keys(apiserver: FakeApiServer, kubeconfig: Path) -> None:
    ensure(kubeconfig)
    secret = apiserver.get("secrets", SECRET, NAMESPACE)
    assert secret is not None
    secret["metadata"]["annotations"] = {"team": "platform"}
    secret["data"]["extra"] = base64.b64encode(b"kept").decode()
    ensure(kubeconfig, now=NOW + datetime.timedelta(days=340))
    replaced = apiserver.get("secrets", SECRET, NAMESPACE)
    assert replaced is not None
    assert replaced["metadata"]["annotations"] == {"team": "platform"} and "extra" in replaced["data"]


@pytest.mark.parametrize(("problem", "make"), [
    ("expired", lambda b: (b.ca_cert, b.cert, NOW + datetime.timedelta(days=400))),
    ("due for renewal", lambda b: (b.ca_cert, b.cert, NOW + datetime.timedelta(days=350))),
    ("not issued by the CA", lambda b: (tls_issuer(SANS)(None).ca_cert, b.cert, NOW)),
])
def test_certificate_problems_say_what_kube_apiserver_would_trip_over(
    problem: str, make: Callable[[CertBundle], tuple[bytes, bytes, datetime.datetime]]
) -> None:
    ca, cert, now = make(tls_issuer(SANS)(None))
    problems = certificate_problems(ca, cert, service_names(SERVICE, NAMESPACE), now=now)
    assert any(problem in p for p in problems), problems


def test_a_certificate_without_the_service_names_is_reported() -> None:
    bundle = tls_issuer(["localhost"])(None)
    problems = certificate_problems(bundle.ca_cert, bundle.cert, service_names(SERVICE, NAMESPACE), now=NOW)
    assert problems == [f"the serving certificate lacks the name(s) {', '.join(service_names(SERVICE, NAMESPACE))}"]


def chart_certs_args(kubeconfig: Path, *, phase: str) -> list[str]:
    """The arguments the chart's hook Job of `phase` passes to gpuguard, pointed at the fake API server."""
    rendered = render()
    job = next(j for j in rendered.of_kind("Job") if phase in j["metadata"]["annotations"]["helm.sh/hook"])
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return [f"--kubeconfig={kubeconfig}" if a == "--in-cluster" else a for a in args]


def gpuguard(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script in a process of its own, as the Job's container runs it."""
    return subprocess.run([sys.executable, "-m", "gpuguard", *args], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)


def gpuguard_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command line in this process (no interpreter start-up): exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_charts_hook_jobs_install_certificates_that_certs_check_then_accepts(
    apiserver: FakeApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    post = gpuguard(*chart_certs_args(kubeconfig, phase="post-install"))
    assert post.returncode == 0, post.stderr
    assert f"Secret {NAMESPACE}/{SECRET}: created" in post.stdout
    assert "ValidatingWebhookConfiguration gpuguard-webhook: caBundle set to CA" in post.stdout
    code, out, err = gpuguard_here(capsys, *chart_certs_args(kubeconfig, phase="pre-upgrade"))
    assert code == 0 and f"Secret {NAMESPACE}/{SECRET}: reused" in out, err
    common = [a for a in chart_certs_args(kubeconfig, phase="post-install")[3:] if not a.startswith("--secret-label")
              and a != "--require-webhook-configurations"]
    code, out, err = gpuguard_here(capsys, "certs", "check", *common)
    assert code == 0, out + err
    assert out.startswith("ok: every webhook trusts CA")


def test_certs_check_reports_a_webhook_that_does_not_trust_the_ca(apiserver: FakeApiServer, kubeconfig: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ensure(kubeconfig)
    bundle = stored_bundle(apiserver)
    (tmp_path / "ca.crt").write_bytes(bundle.ca_cert)
    (tmp_path / "tls.crt").write_bytes(bundle.cert)
    mutating = apiserver.get("mutatingwebhookconfigurations", CONFIGURATION)
    assert mutating is not None
    mutating["webhooks"][0]["clientConfig"]["caBundle"] = tls_issuer(SANS)(None).ca_bundle
    code, out, _ = gpuguard_here(
        capsys, "certs", "check", f"--kubeconfig={kubeconfig}", f"--namespace={NAMESPACE}",
        f"--service-name={SERVICE}", f"--ca-file={tmp_path / 'ca.crt'}", f"--cert-file={tmp_path / 'tls.crt'}",
        f"--mutating-webhook-configuration={CONFIGURATION}", f"--validating-webhook-configuration={CONFIGURATION}")
    assert code == 1
    assert out.strip() == (f"problem: MutatingWebhookConfiguration {CONFIGURATION}: webhook "
                           "mutate.pods.gpuguard.io does not trust the CA (a different caBundle)")


def test_after_install_a_missing_configuration_fails_the_job(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with serving(FakeApiServer()) as empty:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", empty.url)
        code, out, err = gpuguard_here(capsys, *chart_certs_args(kubeconfig, phase="post-install"))
    assert code == 1
    assert "not found" in out and "is the chart installed?" in err


def test_an_unreachable_api_server_is_a_clear_error_not_a_traceback(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")
    code, _, err = gpuguard_here(capsys, *chart_certs_args(kubeconfig, phase="pre-install"))
    assert code == 2
    assert err.startswith(f"gpuguard certs ensure: cannot read Secret {NAMESPACE}/{SECRET}: "), err
    assert "Traceback" not in err


def test_the_serving_certificate_names_match_what_the_api_server_calls() -> None:
    bundle = tls_issuer(SANS)(None)
    names = x509.load_pem_x509_certificate(bundle.cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"{SERVICE}.{NAMESPACE}.svc" in names


def test_a_serving_certificate_sent_with_its_intermediate_chains_to_the_root() -> None:
    """cert-manager appends intermediates to tls.crt; the check follows them up to the caBundle's CA."""
    root_cert, root_key = build_ca(now=NOW)
    intermediate, intermediate_key = build_ca(now=NOW)
    intermediate = _signed_by(intermediate, root_cert, root_key)
    leaf, _ = build_server_cert(intermediate, intermediate_key, SANS, now=NOW)
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (leaf, intermediate))
    names = service_names(SERVICE, NAMESPACE)
    assert certificate_problems(root_cert.public_bytes(Encoding.PEM), pem, names, now=NOW) == []
    other_root, _ = build_ca(now=NOW)
    assert certificate_problems(other_root.public_bytes(Encoding.PEM), pem, names, now=NOW) == [
        "the serving certificate was not issued by the CA in the caBundle: kube-apiserver would refuse it"]


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """`cert` re-signed by `issuer` (an intermediate CA under a root)."""
    builder = (x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string("CN=gpuguard-intermediate"))
               .issuer_name(issuer.subject).public_key(cert.public_key()).serial_number(cert.serial_number)
               .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder.sign(key, hashes.SHA256())


def test_install_upgrade_and_renewal_keep_the_ca_bundle_equal_to_the_serving_certificates_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chart's whole sequence, with the API server emulated: every webhook trusts the Secret's CA after each
    step, an upgrade renders that same caBundle (lookup), and renewal never changes the CA."""
    with serving(FakeApiServer()) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)

        def run(phase: str) -> None:
            code, _, err = gpuguard_here(capsys, *chart_certs_args(kubeconfig, phase=phase))
            assert code == 0, err

        def apply(rendered: Rendered) -> None:  # what helm install/upgrade does to the two configurations
            for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
                server.put(rendered.of_kind(kind)[0])

        run("pre-install")
        apply(render())
        run("post-install")
        installed = stored_bundle(server)
        assert set(ca_bundles(server).values()) == {installed.ca_bundle}

        upgrade = render_with_existing_secret(tmp_path / "upgrade", installed.ca_bundle)
        run("pre-upgrade")
        apply(upgrade)
        assert set(ca_bundles(server).values()) == {installed.ca_bundle}, "no window without a caBundle"
        patches = len([r for r in server.writes() if r.method == "PATCH"])
        run("post-upgrade")
        assert len([r for r in server.writes() if r.method == "PATCH"]) == patches
        assert stored_bundle(server) == installed

        report = ensure(kubeconfig, now=NOW + datetime.timedelta(days=340))  # the renewal CronJob, much later
        assert report.secret == "reissued" and stored_bundle(server).ca_cert == installed.ca_cert
        assert set(ca_bundles(server).values()) == {installed.ca_bundle}

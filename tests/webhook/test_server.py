"""The webhook over real HTTPS: a client that verifies the CA and the service hostname, as kube-apiserver does."""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import json
import shutil
import ssl
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry

import webhook.app
import webhook.memo
from gpuguard.web import serving
from gpuguard.web.policy_source import PolicySource
from gpuguard.web.tls import SERVER_VALIDITY, ReloadingCertificate, default_sans, ensure_self_signed
from tests.conftest import ROOT, review_body
from webhook.app import create_app
from webhook.settings import WebhookSettings

SERVICE_HOST = "gpuguard-webhook.gpuguard.svc"


@dataclass
class Server:
    url: str
    ca: ssl.SSLContext
    registry: CollectorRegistry
    policy_file: Path
    policy: PolicySource
    tls_dir: Path

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url + path, data=io.BytesIO(body), ssl=self.ca,
                                    server_hostname=SERVICE_HOST) as reply:
                return reply.status, await reply.json(content_type=None)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    ensure_self_signed(tmp_path / "tls", default_sans("gpuguard-webhook", "gpuguard"))
    return tmp_path / "tls"


def client_context(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    return context


@pytest.fixture
async def server(tmp_path: Path, tls_dir: Path) -> AsyncIterator[Server]:
    policy_file = tmp_path / "policy.yaml"
    shutil.copy(ROOT / "examples" / "policy.yaml", policy_file)
    registry = CollectorRegistry()
    settings = WebhookSettings(host="127.0.0.1", port=0, policy_path=policy_file, reload_interval=0.05)
    policy = PolicySource(policy_file, registry=registry)
    certificate = ReloadingCertificate(tls_dir / "tls.crt", tls_dir / "tls.key")
    app = create_app(settings, policy=policy, registry=registry, certificate=certificate, serve_metrics=True)
    runners = await serving.start([serving.Listener(app, "127.0.0.1", 0, certificate.context)])
    host, port = runners[0].addresses[0][:2]
    try:
        yield Server(f"https://{host}:{port}", client_context(tls_dir / "ca.crt"), registry, policy_file, policy,
                     tls_dir)
    finally:
        for runner in runners:
            await runner.cleanup()


def decoded_patch(reply: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(base64.b64decode(reply["response"]["patch"]))


@pytest.mark.parametrize(
    ("name", "version"),
    [("review-knative-small-model.json", "admission.k8s.io/v1"),
     ("review-v1beta1-sklearn.json", "admission.k8s.io/v1beta1")],
)
async def test_mutate_answers_in_the_request_version_with_its_uid(server: Server, name: str, version: str) -> None:
    body = review_body(name)
    status, reply = await server.post("/mutate", body)
    assert status == 200
    assert reply["apiVersion"] == version
    assert reply["kind"] == "AdmissionReview"
    assert reply["response"]["uid"] == json.loads(body)["request"]["uid"]
    assert reply["response"]["allowed"] is True
    assert reply["response"]["patchType"] == "JSONPatch"
    ops = decoded_patch(reply)
    if "sklearn" in name:  # a CPU-only server: no GPU, only the record of the rule
        assert ops == [{"op": "add", "path": "/metadata/annotations/gpuguard.io~1applied", "value": "cpu-only-servers"}]
    else:
        assert {"op": "add", "path": "/spec/containers/0/resources/limits/nvidia.com~1mig-1g.10gb", "value": "1"} in ops


async def test_validate_denies_with_a_403_status_message(server: Server) -> None:
    status, reply = await server.post("/validate", review_body("review-isvc-fractional-gpu.json"))
    assert status == 200
    response = reply["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert "not a whole number" in response["status"]["message"]
    assert "patch" not in response


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "not an AdmissionReview"),
        (b'{"apiVersion": "v1", "kind": "Pod"}', "not an AdmissionReview"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": ""}}', "request.uid"),
        (b"", "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_400_with_a_json_error_and_the_server_keeps_serving(
    server: Server, body: bytes, fragment: str
) -> None:
    status, reply = await server.post("/mutate", body)
    assert status == 400
    assert fragment in reply["error"]
    assert server.metric("gpuguard_webhook_bad_requests_total", endpoint="mutate") == 1
    status, _ = await server.post("/mutate", review_body("review-knative-triton.json"))
    assert status == 200


def _padded_review(size: int) -> bytes:
    review = json.loads(review_body("review-knative-triton.json"))
    review["request"]["object"]["metadata"]["annotations"]["padding"] = ""
    base = len(json.dumps(review).encode())
    review["request"]["object"]["metadata"]["annotations"]["padding"] = "x" * (size - base)
    body = json.dumps(review).encode()
    assert len(body) == size
    return body


async def test_bodies_up_to_three_mebibytes_are_accepted(server: Server) -> None:
    status, reply = await server.post("/mutate", _padded_review(3 * 1024 * 1024 - 16))
    assert status == 200
    assert reply["response"]["allowed"] is True


async def test_bodies_over_three_mebibytes_are_refused_before_parsing(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/mutate", data=io.BytesIO(_padded_review(3 * 1024 * 1024 + 16)),
                                ssl=server.ca,
                                server_hostname=SERVICE_HOST) as reply:
            assert reply.status == 413


async def test_probes_answer(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz"):
            async with session.get(server.url + path, ssl=server.ca, server_hostname=SERVICE_HOST) as reply:
                assert reply.status == 200


async def test_admissions_are_counted_by_decision_and_rule_and_timed(server: Server) -> None:
    await server.post("/mutate", review_body("review-knative-small-model.json"))
    await server.post("/validate", review_body("review-isvc-fractional-gpu.json"))
    assert server.metric(
        "gpuguard_webhook_admissions_total", endpoint="mutate", operation="CREATE", kind="Pod", decision="patched",
        rule="small-models-on-mig",
    ) == 1
    assert server.metric(
        "gpuguard_webhook_admissions_total", endpoint="validate", operation="CREATE", kind="InferenceService",
        decision="denied", rule="defaults",
    ) == 1
    assert server.metric("gpuguard_webhook_admission_duration_seconds_count", endpoint="mutate") == 1
    assert server.metric("gpuguard_webhook_admission_duration_seconds_bucket", endpoint="mutate", le="0.005") == 1


@pytest.mark.parametrize(("path", "module", "name"), [("/mutate", webhook.memo, "mutate"),
                                                      ("/validate", webhook.app, "review")])
async def test_an_internal_error_is_answered_per_the_failure_mode_not_crashed(
    server: Server, monkeypatch: pytest.MonkeyPatch, path: str, module: Any, name: str
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(module, name, broken)
    body = review_body("review-knative-small-model.json")
    status, reply = await server.post(path, body)
    assert status == 200
    assert reply["response"]["allowed"] is True
    assert "internal error" in reply["response"]["warnings"][0]
    assert json.loads(body)["request"]["uid"] in reply["response"]["warnings"][0]


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_changed_policy_file_is_applied_without_restart(server: Server) -> None:
    text = server.policy_file.read_text().replace("migProfile: 1g.10gb", "migProfile: 2g.20gb")
    server.policy_file.write_text(text)
    await wait_for(lambda: server.policy.generation == 2)
    _, reply = await server.post("/mutate", review_body("review-knative-small-model.json"))
    paths = [op["path"] for op in decoded_patch(reply)]
    assert "/spec/containers/0/resources/limits/nvidia.com~1mig-2g.20gb" in paths
    assert server.metric("gpuguard_policy_reloads_total", result="success") == 1
    assert server.metric("gpuguard_policy_generation") == 2


@pytest.mark.parametrize("broken", ["mode: sometimes\n", "apiVersion: gpuguard.io/v1\nkind: GpuPol", ""])
async def test_a_broken_policy_update_is_refused_and_the_last_good_policy_stays(server: Server, broken: str) -> None:
    server.policy_file.write_text(broken)
    await wait_for(lambda: server.metric("gpuguard_policy_reloads_total", result="error") >= 1)
    _, reply = await server.post("/mutate", review_body("review-knative-small-model.json"))
    assert "/spec/containers/0/resources/limits/nvidia.com~1mig-1g.10gb" in [op["path"] for op in decoded_patch(reply)]
    assert server.policy.generation == 1
    assert server.metric("gpuguard_policy_last_reload_failed") == 1


async def test_a_deleted_policy_file_keeps_the_last_good_policy(server: Server) -> None:
    server.policy_file.unlink()
    await wait_for(lambda: server.metric("gpuguard_policy_reloads_total", result="error") >= 1)
    status, _ = await server.post("/mutate", review_body("review-knative-small-model.json"))
    assert status == 200
    assert server.policy.generation == 1


async def handshake(server: Server, context: ssl.SSLContext) -> bytes:
    """Complete a TLS handshake as a client; return the certificate the server presented (DER)."""
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=context, server_hostname=SERVICE_HOST)
    try:
        return bytes(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()
        await writer.wait_closed()


async def _served_certificate(server: Server) -> bytes:
    return await handshake(server, server.ca)


async def test_a_rotated_certificate_is_served_without_restart(server: Server, tmp_path: Path) -> None:
    before = await _served_certificate(server)
    rotated = tmp_path / "rotated"
    shutil.copytree(server.tls_dir, rotated)
    (rotated / "tls.crt").unlink()  # same CA, new server certificate
    ensure_self_signed(rotated, default_sans("gpuguard-webhook", "gpuguard"))
    shutil.copy(rotated / "tls.key", server.tls_dir / "tls.key")
    shutil.copy(rotated / "tls.crt", server.tls_dir / "tls.crt")
    await wait_for(lambda: server.metric("gpuguard_webhook_certificate_reloads_total") == 1)
    after = await _served_certificate(server)
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert((rotated / "tls.crt").read_text())


async def test_the_served_certificates_expiry_is_exported_and_follows_a_rotation(server: Server,
                                                                               tmp_path: Path) -> None:
    def expiry(path: Path) -> float:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()

    name = "gpuguard_webhook_certificate_expiry_timestamp_seconds"
    assert server.metric(name) == expiry(server.tls_dir / "tls.crt")
    rotated = tmp_path / "rotated"
    shutil.copytree(server.tls_dir, rotated)
    (rotated / "tls.crt").unlink()  # reissued as if a year less three days ago: it expires in three days
    issued = datetime.datetime.now(datetime.timezone.utc) - SERVER_VALIDITY + datetime.timedelta(days=3)
    ensure_self_signed(rotated, default_sans("gpuguard-webhook", "gpuguard"), now=issued)
    shutil.copy(rotated / "tls.key", server.tls_dir / "tls.key")
    shutil.copy(rotated / "tls.crt", server.tls_dir / "tls.crt")
    await wait_for(lambda: server.metric(name) == expiry(rotated / "tls.crt"))
    assert abs(server.metric(name) - (issued + SERVER_VALIDITY).timestamp()) < 1


async def test_the_certificate_names_the_service_and_a_wrong_name_is_refused(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(server.url + "/healthz", ssl=server.ca, server_hostname="other.gpuguard.svc")


def _tls12_client(server: Server, ciphers: str) -> ssl.SSLContext:
    context = client_context(server.tls_dir / "ca.crt")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


async def test_tls_1_2_with_a_forward_secret_aead_cipher_is_accepted(server: Server) -> None:
    assert await handshake(server, _tls12_client(server, "ECDHE-ECDSA-AES128-GCM-SHA256"))


async def test_tls_1_2_with_a_cbc_cipher_is_refused(server: Server) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server, _tls12_client(server, "ECDHE-ECDSA-AES128-SHA"))


async def test_tls_older_than_1_2_is_refused(server: Server) -> None:
    context = client_context(server.tls_dir / "ca.crt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting an old version is what this test is about
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(server, context)


def test_self_signed_files_are_reused_so_the_ca_bundle_survives_restarts(tls_dir: Path) -> None:
    ca = (tls_dir / "ca.crt").read_bytes()
    cert = (tls_dir / "tls.crt").read_bytes()
    ensure_self_signed(tls_dir, default_sans("gpuguard-webhook", "gpuguard"))
    assert (tls_dir / "ca.crt").read_bytes() == ca
    assert (tls_dir / "tls.crt").read_bytes() == cert


async def test_repeated_pods_get_their_own_uid_and_the_same_patch(server: Server) -> None:
    review = json.loads(review_body("review-knative-small-model.json"))
    replies = []
    for uid in ("first-uid", "second-uid", "third-uid"):
        review["request"]["uid"] = uid
        status, reply = await server.post("/mutate", json.dumps(review, separators=(",", ":")).encode())
        assert status == 200
        assert reply["response"]["uid"] == uid
        replies.append(reply)
    assert replies[0]["response"]["patch"] == replies[1]["response"]["patch"] == replies[2]["response"]["patch"]
    assert server.metric(
        "gpuguard_webhook_admissions_total", endpoint="mutate", operation="CREATE", kind="Pod", decision="patched",
        rule="small-models-on-mig",
    ) == 3

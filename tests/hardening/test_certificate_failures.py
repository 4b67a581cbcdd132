"""Certificate files that cannot be served: the old certificate stays, and a log line, a metric and /readyz say so.

Garbage, empty files, a certificate with someone else's key, a weak (RSA-1024) key, an expired certificate and a FIFO
each arrive the way the kubelet delivers a Secret (an atomic swap of the volume's `..data`). The webhook keeps
serving the pair it has, logs one WARNING per distinct refusal however often it polls, counts it in
`gpuguard_webhook_certificate_reload_failures_total`, raises `gpuguard_webhook_certificate_reload_failed`, and names
the problem and the expiry of the certificate in use in /readyz's body; /readyz turns 503 only once the certificate
in use has expired. A good pair afterwards clears all of it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gpuguard.web.tls import ReloadingCertificate, build_server_cert
from tests.hardening.inprocess import InProcessServer
from tests.hardening.test_certificate_rotation import (
    SANS,
    Issuer,
    KubeletVolume,
    client_context,
    pem_to_der,
    served_certificate,
)
from tests.hardening.wire import exchange, head

NOW = datetime.datetime.now(datetime.timezone.utc)


def _ca(issuer: Issuer) -> tuple[x509.Certificate, object]:
    ca_dir = issuer.directory / "ca"
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    return cert, key


def weak_rsa_pair(issuer: Issuer) -> tuple[bytes, bytes]:
    ca_cert, ca_key = _ca(issuer)
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "weak")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def expired_pair(issuer: Issuer) -> tuple[bytes, bytes]:
    ca_cert, ca_key = _ca(issuer)
    cert, key = build_server_cert(ca_cert, ca_key, SANS, now=NOW - datetime.timedelta(days=400))  # type: ignore[arg-type]
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def swap_in_fifo(volume: KubeletVolume) -> None:
    volume.version += 1
    version = volume.directory / f"..2026_{volume.version:04d}"
    version.mkdir()
    os.mkfifo(version / "tls.crt")
    (version / "tls.key").write_bytes(b"")
    (volume.directory / "..data_tmp").symlink_to(version.name)
    os.replace(volume.directory / "..data_tmp", volume.directory / "..data")


Breaking = Callable[[KubeletVolume, Issuer, bytes], None]
CASES: dict[str, tuple[Breaking, str]] = {
    "garbage": (lambda v, i, key: v.swap(b"-----BEGIN CERTIFICATE-----\ngarbage\n", b"garbage"),
                "tls.crt holds no PEM certificate"),
    "empty": (lambda v, i, key: v.swap(b"", b""), "tls.crt holds no PEM certificate"),
    "someone else's key": (lambda v, i, key: v.swap(i.issue()[0], key),
                           "tls.key is not the key of the certificate in tls.crt"),
    "encrypted key": (lambda v, i, key: v.swap(*encrypted(i.issue())), "not an unencrypted PEM private key"),
    "RSA-1024": (lambda v, i, key: v.swap(*weak_rsa_pair(i)), "1024-bit RSA key; use at least 2048"),
    "expired": (lambda v, i, key: v.swap(*expired_pair(i)), "expired at"),
    "a FIFO": (lambda v, i, key: swap_in_fifo(v), "a FIFO, not a regular file"),
}


def encrypted(pair: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    key = serialization.load_pem_private_key(pair[1], password=None)
    return pair[0], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret"))


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path / "issuer")


@pytest.fixture
def pair(issuer: Issuer) -> tuple[bytes, bytes]:
    return issuer.issue()


@pytest.fixture
def volume(tmp_path: Path, pair: tuple[bytes, bytes]) -> KubeletVolume:
    return KubeletVolume(tmp_path / "secret", *pair)


@pytest.fixture
def server(volume: KubeletVolume) -> Iterator[InProcessServer]:
    certificate = ReloadingCertificate(volume.directory / "tls.crt", volume.directory / "tls.key")
    with InProcessServer(certificate=certificate, reload_interval=0.02) as running:
        yield running


def readyz(server: InProcessServer, issuer: Issuer) -> tuple[int, dict[str, object]]:
    reply = exchange(server.port, head("GET", "/readyz", "Connection: close"), context=client_context(issuer.ca))
    return reply.status, json.loads(reply.body)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("case", CASES)
def test_files_that_cannot_be_served_keep_the_old_certificate_and_say_so_once(
    server: InProcessServer, volume: KubeletVolume, issuer: Issuer, pair: tuple[bytes, bytes], case: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    breaking, words = CASES[case]
    with caplog.at_level(logging.INFO, logger="webhook.app"):
        breaking(volume, issuer, pair[1])
        wait_for(lambda: server.metric("gpuguard_webhook_certificate_reload_failed") == 1)
        time.sleep(0.3)  # about fifteen more polls of the same refused files
    assert served_certificate(server.port, client_context(issuer.ca)) == pem_to_der(pair[0])
    assert server.metric("gpuguard_webhook_certificate_reload_failures_total") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and words in warnings[0] and "keeping the certificate in use" in warnings[0]
    status, body = readyz(server, issuer)
    assert status == 200 and body["status"] == "ready"
    (note,) = body["notes"]  # type: ignore[misc]
    assert words in note and "expires at" in note
    good = issuer.issue()
    volume.swap(*good)
    wait_for(lambda: server.metric("gpuguard_webhook_certificate_reload_failed") == 0)
    assert served_certificate(server.port, client_context(issuer.ca)) == pem_to_der(good[0])
    assert "notes" not in readyz(server, issuer)[1]


def test_the_expiry_of_the_certificate_in_use_is_a_metric(server: InProcessServer, pair: tuple[bytes, bytes]) -> None:
    expires = x509.load_pem_x509_certificate(pair[0]).not_valid_after_utc.timestamp()
    assert server.metric("gpuguard_webhook_certificate_expiry_timestamp_seconds") == expires


def test_readiness_fails_once_the_certificate_in_use_has_expired(server: InProcessServer, issuer: Issuer) -> None:
    """Until then a refused reload only adds a note: failing every replica's readiness early (they all read the same
    Secret) would bring the outage forward instead of announcing it."""
    assert server.certificate is not None
    server.certificate.not_after = NOW - datetime.timedelta(minutes=1)
    status, body = readyz(server, issuer)
    assert status == 503 and body["status"] == "not ready"
    assert any("expired at" in str(note) for note in body["notes"])  # type: ignore[attr-defined]


def test_a_certificate_the_webhook_cannot_serve_at_start_stops_it_with_the_reason(
    volume: KubeletVolume, issuer: Issuer
) -> None:
    volume.swap(*weak_rsa_pair(issuer))
    with pytest.raises(ValueError, match="1024-bit RSA key"):
        ReloadingCertificate(volume.directory / "tls.crt", volume.directory / "tls.key")
    with pytest.raises(ssl.SSLError):  # what OpenSSL alone would have said, for comparison: no file, no fix
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            volume.directory / "tls.crt", volume.directory / "tls.key")

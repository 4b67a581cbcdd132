"""Certificate rotation on disk while the webhook is busy: no failed handshake, and the new certificate is served.

cert-manager renews the serving certificate by rewriting the Secret, and the kubelet swaps the mounted files
atomically (a `..data` symlink pointing at a new directory); other tools replace the two files one after the other,
so for a moment the certificate on disk is new and the key is old. Both are driven here against the real app, with
clients opening a new TLS connection per request the whole time.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpuguard.web.tls import CertificateRefused, ReloadingCertificate, default_sans, ensure_self_signed
from tests.conftest import review_body
from tests.hardening.inprocess import InProcessServer

SERVICE_HOST = "gpuguard-webhook.gpuguard.svc"
SANS = default_sans("gpuguard-webhook", "gpuguard")


class Issuer:
    """Issues new serving certificates from one CA, as cert-manager does on renewal."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = ensure_self_signed(directory / "ca", SANS).ca_cert
        self.count = 0

    def issue(self) -> tuple[bytes, bytes]:
        self.count += 1
        target = self.directory / f"issued-{self.count}"
        target.mkdir()
        for name in ("ca.crt", "ca.key"):
            shutil.copy(self.directory / "ca" / name, target / name)
        files = ensure_self_signed(target, SANS)
        return files.cert.read_bytes(), files.key.read_bytes()


class KubeletVolume:
    """A Secret volume as the kubelet lays it out: tls.crt -> ..data/tls.crt, ..data -> a timestamped directory."""

    def __init__(self, directory: Path, cert: bytes, key: bytes) -> None:
        self.directory = directory
        directory.mkdir()
        self.version = 0
        self.swap(cert, key)
        for name in ("tls.crt", "tls.key"):
            (directory / name).symlink_to(Path("..data") / name)

    def swap(self, cert: bytes, key: bytes) -> None:
        """Both files change at once: a new directory, then one rename of the ..data link."""
        self.version += 1
        version = self.directory / f"..2026_{self.version:04d}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert)
        (version / "tls.key").write_bytes(key)
        temporary = self.directory / "..data_tmp"
        temporary.symlink_to(version.name)
        os.replace(temporary, self.directory / "..data")

    def replace_one_by_one(self, cert: bytes, key: bytes, *, pause: float) -> None:
        """The certificate first, the key `pause` seconds later, each file atomically (rename over it)."""
        for name, data in (("tls.crt", cert), ("tls.key", key)):
            temporary = self.directory / "..data" / f".{name}.new"
            temporary.write_bytes(data)
            os.replace(temporary, self.directory / "..data" / name)
            time.sleep(pause if name == "tls.crt" else 0)


def client_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=SERVICE_HOST) as connection:
            return bytes(connection.getpeercert(binary_form=True))


def post_mutate(port: int, context: ssl.SSLContext, body: bytes) -> int:
    """One request on a new connection (so a new handshake); the HTTP status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=SERVICE_HOST) as connection:
            head = (f"POST /mutate HTTP/1.1\r\nHost: {SERVICE_HOST}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            connection.sendall(head + body)
            reply = b""
            while chunk := connection.recv(65536):
                reply += chunk
    return int(reply.split(b" ", 2)[1])


@dataclass
class Load:
    """Clients sending /mutate requests, each on a fresh TLS connection, until stopped."""

    port: int
    context: ssl.SSLContext
    body: bytes
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                status = post_mutate(self.port, self.context, self.body)
            except (OSError, ssl.SSLError) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(f"HTTP {status}")


def pem_to_der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path / "issuer")


@pytest.fixture
def volume(tmp_path: Path, issuer: Issuer) -> KubeletVolume:
    return KubeletVolume(tmp_path / "secret", *issuer.issue())


@pytest.fixture
def server(volume: KubeletVolume) -> Iterator[InProcessServer]:
    certificate = ReloadingCertificate(volume.directory / "tls.crt", volume.directory / "tls.key")
    with InProcessServer(certificate=certificate, reload_interval=0.01) as running:
        yield running


def wait_until_served(port: int, context: ssl.SSLContext, cert_pem: bytes, timeout: float = 10.0) -> None:
    expected = pem_to_der(cert_pem)
    deadline = time.monotonic() + timeout
    while served_certificate(port, context) != expected:
        assert time.monotonic() < deadline, "the rotated certificate was not served in time"
        time.sleep(0.01)


def test_rotations_under_load_never_fail_a_handshake_and_serve_the_new_certificate(
    server: InProcessServer, volume: KubeletVolume, issuer: Issuer
) -> None:
    context = client_context(issuer.ca)
    load = Load(server.port, context, review_body("review-knative-sklearn.json"))
    clients = [threading.Thread(target=load.run) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        for rotation in range(6):
            cert, key = issuer.issue()
            if rotation % 2:
                volume.swap(cert, key)
            else:  # the key lands well after the certificate: the reloader sees the mismatched pair many times
                volume.replace_one_by_one(cert, key, pause=0.15)
            wait_until_served(server.port, context, cert)
    finally:
        load.stop.set()
        for client in clients:
            client.join(30)
    assert load.failures == []
    assert load.ok >= 20, "the clients kept the server busy during the rotations"
    assert server.metric("gpuguard_webhook_certificate_reloads_total") >= 6


def test_a_certificate_without_its_key_yet_is_not_loaded_and_the_old_pair_keeps_serving(
    volume: KubeletVolume, issuer: Issuer
) -> None:
    certificate = ReloadingCertificate(volume.directory / "tls.crt", volume.directory / "tls.key")
    old = (volume.directory / "tls.crt").read_bytes()
    with InProcessServer(certificate=certificate, reload_interval=3600) as server:
        context = client_context(issuer.ca)
        cert, key = issuer.issue()
        (volume.directory / "tls.crt").unlink()
        (volume.directory / "tls.crt").write_bytes(cert)
        with pytest.raises(CertificateRefused, match="tls.key is not the key of the certificate in tls.crt"):
            certificate.refresh()
        assert certificate.refresh() is False, "the same refused pair is reported once"
        assert certificate.problem is not None
        assert served_certificate(server.port, context) == pem_to_der(old)
        assert post_mutate(server.port, context, review_body("review-knative-sklearn.json")) == 200
        (volume.directory / "tls.key").unlink()
        (volume.directory / "tls.key").write_bytes(key)
        assert certificate.refresh() is True
        assert certificate.problem is None
        assert served_certificate(server.port, context) == pem_to_der(cert)


def _tls12(ca: Path, ciphers: str) -> ssl.SSLContext:
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def _tls11(ca: Path) -> ssl.SSLContext:
    context = client_context(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an old version is the point of this client
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


def test_after_a_rotation_the_same_tls_rules_hold(server: InProcessServer, volume: KubeletVolume,
                                                  issuer: Issuer) -> None:
    cert, key = issuer.issue()
    volume.swap(cert, key)
    wait_until_served(server.port, client_context(issuer.ca), cert)
    assert served_certificate(server.port, _tls12(issuer.ca, "ECDHE-ECDSA-AES128-GCM-SHA256")) == pem_to_der(cert)
    for refused in (_tls12(issuer.ca, "ECDHE-ECDSA-AES128-SHA"), _tls11(issuer.ca)):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            served_certificate(server.port, refused)

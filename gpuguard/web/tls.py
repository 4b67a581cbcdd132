"""TLS for the services: self-signed certificates built with `cryptography`, and server contexts that reload.

kube-apiserver calls a webhook at `<service>.<namespace>.svc` and checks the certificate's SANs (CN-only
certificates are rejected since Go 1.15), so the self-signed server certificate carries every name the service can
be reached by: `S`, `S.N`, `S.N.svc`, `S.N.svc.cluster.local`, plus localhost and 127.0.0.1 for probes and tests.

The CA and the server certificate are separate: the CA (whose certificate is the webhook's `caBundle`) lives ten
years and is reused from disk, while the server certificate is reissued by that CA when it nears expiry or its names
change. The caBundle therefore stays equal across restarts and upgrades, the failure users of other webhooks keep
hitting. Certificates mounted from a Secret (cert-manager rotates them in place) are re-read when they change;
they are read as regular files of at most 1 MiB only, and checked (parsed, key matching, key strength, not expired)
before OpenSSL sees them.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpuguard.web.files import read_regular_file

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)
"""Reissue the server certificate when less than this is left, well before any client sees it expire."""

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are all modern and not affected by this list.
MODERN_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names a Kubernetes Service is reached by from inside the cluster."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def default_sans(service: str | None, namespace: str | None) -> list[str]:
    names = service_names(service, namespace) if service and namespace else ([service] if service else [])
    return [*names, "localhost", "127.0.0.1", "::1"]


def ensure_self_signed(directory: Path, sans: Sequence[str], *, now: datetime.datetime | None = None) -> TlsFiles:
    """Write `ca.crt`, `ca.key`, `tls.crt`, `tls.key` into `directory` if absent; reuse what is there.

    The server certificate is reissued (by the same CA) when it expires within `RENEW_BEFORE` or lacks a name in
    `sans`; the CA is only created when missing, so a caBundle taken from `ca.crt` stays valid.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    ca_key_path = directory / "ca.key"
    if files.ca_cert.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path}: expected an EC private key")
    else:
        ca_cert, ca_key = build_ca(now=now)
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    if not _server_cert_usable(files, ca_cert, sans, now):
        cert, key = build_server_cert(ca_cert, ca_key, sans, now=now)
        _write(files.key, _key_pem(key), private=True)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def build_ca(*, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpuguard-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def build_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: Sequence[str], *, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = next((s for s in sans if not _is_ip(s)), "gpuguard")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_general_names(sans)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


MAX_PEM_BYTES = 1024 * 1024
"""Bytes read of a certificate or key file at most: a Secret holds at most 1 MiB."""
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
"""Weaker keys are refused with a message, rather than by OpenSSL's security level with its own words."""


class CertificateRefused(ValueError):
    """Certificate and key files that cannot be served; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class ServingPair:
    """A certificate chain and its key as read from disk, checked to belong together and to be strong enough."""

    cert_pem: bytes
    key_pem: bytes
    not_after: datetime.datetime

    @property
    def digest(self) -> str:
        return _digest(self.cert_pem, self.key_pem)


def read_pair(cert: Path, key: Path, *, now: datetime.datetime | None = None) -> ServingPair:
    """Read and check a serving pair; `CertificateRefused` says what is wrong with it."""
    cert_pem, key_pem = _read(cert), _read(key)
    return check_pair(cert_pem, key_pem, cert_name=cert.name, key_name=key.name, now=now)


def check_pair(cert_pem: bytes, key_pem: bytes, *, cert_name: str = "tls.crt", key_name: str = "tls.key",
               now: datetime.datetime | None = None) -> ServingPair:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise CertificateRefused(f"{cert_name} holds no PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateRefused(f"{key_name} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateRefused(f"{key_name} is not the key of the certificate in {cert_name}")
    weakness = _weakness(private)
    if weakness:
        raise CertificateRefused(f"{key_name} holds {weakness}")
    if leaf.not_valid_after_utc <= now:
        raise CertificateRefused(f"the certificate in {cert_name} expired at {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return ServingPair(cert_pem, key_pem, leaf.not_valid_after_utc)


def _weakness(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        return f"a {key.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits (or an EC P-256 key)"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size < MIN_EC_BITS:
        return f"an EC key on {key.curve.name}; use P-256 or larger"
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):
        return f"a {type(key).__name__.removeprefix('_')} key, which TLS servers do not use; use RSA or EC"
    return ""


def _read(path: Path) -> bytes:
    try:
        return read_regular_file(path, limit=MAX_PEM_BYTES)
    except OSError as error:
        raise CertificateRefused(f"cannot read {path.name}: {error.strerror or error}") from None


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context that speaks TLS 1.2+ with forward-secret AEAD ciphers only, for a checked pair of files."""
    return context_for(read_pair(cert, key))


def context_for(pair: ServingPair) -> ssl.SSLContext:
    """The context for exactly the bytes that were checked: OpenSSL reads them from memory files, not the paths,
    which may hold something else by now (or be a FIFO, which would block it)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    with _memory_file(pair.cert_pem) as cert_path, _memory_file(pair.key_pem) as key_path:
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as error:
            raise CertificateRefused(f"OpenSSL refused the pair: {error.reason or error}") from None
    return context


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    descriptor = os.memfd_create("gpuguard-pem", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view):]
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)


class ReloadingCertificate:
    """Keeps the certificate a server presents equal to the files on disk, without ever presenting a torn pair.

    `context` is the context the server listens with; it keeps the pair it started with. `refresh()` re-reads the
    files when their content changed and builds a fresh context from them off to the side; only a context whose
    certificate and key match (and pass `check_pair`) replaces `current`, and the listening context's SNI callback
    (which OpenSSL runs on every handshake, with or without a server name) hands each new connection the `current`
    one. Connections already open keep theirs.

    Loading the new pair into the listening context itself would not be safe: OpenSSL replaces the certificate
    first and the key after, so a handshake in between, or a pair read half-way through a rotation (new
    certificate, old key), leaves the context without a usable key and every handshake fails until the next good
    reload. Swapping whole contexts is one reference assignment.

    Files that cannot be served keep the pair in use and are reported once: `refresh()` raises `CertificateRefused`
    the first time it meets a given content (or read error), and `problem` holds the reason until the files are
    served again. `not_after` is when the certificate in use expires.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        pair = read_pair(cert, key)
        self.context = context_for(pair)
        self.current = self.context
        self.not_after = pair.not_after
        self.problem: str | None = None
        self._digest = pair.digest
        self._refused = ""
        """What was refused last: the files' digest, or the read error."""
        self.context.sni_callback = self._select

    def _select(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        current = self.current
        if current is not self.context:
            connection.context = current

    def refresh(self) -> bool:
        """Reload if the files changed; True when new handshakes now present the new certificate."""
        try:
            cert_pem, key_pem = _read(self.cert), _read(self.key)
        except CertificateRefused as error:
            return self._refuse(str(error), str(error))
        digest = _digest(cert_pem, key_pem)
        if digest == self._digest:
            self.problem, self._refused = None, ""  # back to the pair in use: nothing is refused now
            return False
        if digest == self._refused:
            return False
        try:
            pair = check_pair(cert_pem, key_pem, cert_name=self.cert.name, key_name=self.key.name)
            context = context_for(pair)
        except CertificateRefused as error:
            return self._refuse(digest, str(error))
        self.current, self._digest, self.not_after = context, digest, pair.not_after
        self.problem, self._refused = None, ""
        return True

    def _refuse(self, key: str, reason: str) -> bool:
        if key == self._refused:
            return False
        self._refused, self.problem = key, reason
        raise CertificateRefused(reason)


def _digest(cert_pem: bytes, key_pem: bytes) -> str:
    return hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest()


def _not_after(cert: Path) -> float:
    """The expiry of the first certificate in a PEM file (the server's own; a chain's CAs follow it)."""
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()


def _server_cert_usable(files: TlsFiles, ca: x509.Certificate, sans: Sequence[str], now: datetime.datetime) -> bool:
    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    present = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    present |= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    wanted = {str(ipaddress.ip_address(s)) if _is_ip(s) else s for s in sans}
    fresh = cert.not_valid_after_utc - now > RENEW_BEFORE
    return cert.issuer == ca.subject and wanted <= present and fresh


def _general_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for san in dict.fromkeys(sans):
        names.append(x509.IPAddress(ipaddress.ip_address(san)) if _is_ip(san) else x509.DNSName(san))
    return names


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a certificate."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    if private:
        os.chmod(temp, 0o600)
    os.replace(temp, path)

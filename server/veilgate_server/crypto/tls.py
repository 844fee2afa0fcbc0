"""TLS material for the gateway: a local certificate authority and the server's certificate.

``veilgate serve`` always speaks TLS. When the operator gives no certificate, the gateway makes a
local CA and a server certificate (for localhost, 127.0.0.1 and ::1 plus any extra names) in its
data directory on first start; clients trust the CA file. Keys are ECDSA P-256, certificates X.509 v3
with the usual constraints, so any TLS stack (BoringSSL in gRPC, Node, Java) accepts them.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veilgate.errors import ConfigurationError
from veilgate_server.crypto.keys import file_stamp, warn_if_others_can_read, write_private_file

__all__ = ["CertificateAuthority", "PeerCertificate", "TlsFiles", "ensure_local_tls", "peer_certificate"]

_DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA that can issue server certificates (and, later, institution client certificates)."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str, *, now: dt.datetime, days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        hosts: Sequence[str] = (),
        uris: Sequence[str] = (),
        client: bool = False,
        now: dt.datetime,
        days: int = 825,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf certificate; returns (certificate PEM, private key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        san = _san(hosts)
        if uris:
            san = x509.SubjectAlternativeName([*san, *(x509.UniformResourceIdentifier(u) for u in uris)])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's TLS material lives."""

    ca_certificate: Path
    certificate: Path
    private_key: Path

    def load(self) -> tuple[bytes, bytes]:
        """(certificate chain PEM, private key PEM) for grpc.ssl_server_credentials."""
        warn_if_others_can_read(self.private_key, "TLS server key")
        try:
            return self.certificate.read_bytes(), self.private_key.read_bytes()
        except OSError as e:
            raise ConfigurationError(f"cannot read TLS file {e.filename}: {e.strerror}") from e

    def load_checked(self) -> tuple[bytes, bytes, dt.datetime]:
        """:meth:`load`, and the certificate's expiry, once the chain's first certificate is found to
        be for the private key: ConfigurationError otherwise (a renewal caught half-written)."""
        chain, key = self.load()
        try:
            certificate = x509.load_pem_x509_certificate(chain)
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigurationError(f"{self.certificate} and {self.private_key} do not read as PEM: {e}") from e
        if _spki(certificate.public_key()) != _spki(private.public_key()):
            raise ConfigurationError(f"the certificate in {self.certificate} is not for the key in {self.private_key}")
        return chain, key, certificate.not_valid_after_utc

    def stamp(self) -> tuple[int, ...] | None:
        """:func:`~veilgate_server.crypto.keys.file_stamp` of the certificate and the key."""
        return file_stamp(self.certificate, self.private_key)


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def ensure_local_tls(directory: Path, *, now: dt.datetime, hosts: Sequence[str] = ()) -> tuple[TlsFiles, bool]:
    """Create a local CA and server certificate in ``directory`` unless present. Returns (files, created)."""
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    if files.certificate.exists() and files.private_key.exists() and files.ca_certificate.exists():
        return files, False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create("Veilgate local CA", now=now)
        cert_pem, key_pem = ca.issue("veilgate-gateway", hosts=[*_DEFAULT_HOSTS, *hosts], now=now)
        for path in (files.ca_certificate, files.certificate, files.private_key, directory / "ca.key"):
            path.unlink(missing_ok=True)
        write_private_file(directory / "ca.key", _pem_key(ca.key))
        write_private_file(files.private_key, key_pem)
        files.certificate.write_bytes(cert_pem + ca.certificate_pem)
        files.ca_certificate.write_bytes(ca.certificate_pem)
    except OSError as e:
        raise ConfigurationError(f"cannot create TLS files in {directory}: {e.strerror}") from e
    return files, True


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What the gateway reads from a caller's client certificate: its URI subject alternative names
    (the SPIFFE ID), its serial in lower-case hex, and when it expires."""

    uri_sans: tuple[str, ...]
    serial_hex: str
    not_after: dt.datetime


@functools.lru_cache(maxsize=1024)
def peer_certificate(certificate_pem: bytes) -> PeerCertificate:
    """The URI SANs and serial of a PEM certificate (already verified by the TLS layer).

    Kept for the last 1024 certificates: an institution presents the same certificate on every
    call, and parsing it cost about 150 µs a call under load (measured). A pure function of the
    bytes, so the cache can never answer for another certificate."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        serial_hex, not_after = f"{certificate.serial_number:x}", certificate.not_valid_after_utc
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return PeerCertificate((), serial_hex, not_after)
    except ValueError as e:
        raise ConfigurationError("the peer certificate could not be parsed") from e
    uri_sans = tuple(extension.value.get_values_for_type(x509.UniformResourceIdentifier))
    return PeerCertificate(uri_sans, serial_hex, not_after)

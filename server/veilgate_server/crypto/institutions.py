"""The institution CA: client certificates for banks and insurers (and for departments, the data
sources) calling the gateway over mTLS.

It is a CA of its own, separate from the CA behind the server's TLS certificate, so that trusting
one never means trusting the other: the server presents a certificate from the server CA, and only
certificates from the institution CA are accepted as client certificates.

A client certificate says who the caller is in exactly one place, the URI subject alternative name
``spiffe://<trust-domain>/institution/<id>`` (or ``/department/<id>``) (read back by
:func:`veilgate_server.core.identity.identity_from_uri_sans`). It is a leaf (``CA:FALSE``) for
``clientAuth`` only. When the institution sends a CSR, only its public key and its proof of
possession (the CSR signature) are used: the subject, SANs and extensions it asks for are ignored,
since the operator, not the applicant, decides which identity the certificate binds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veilgate.errors import ConfigurationError
from veilgate_server.core.identity import DEFAULT_TRUST_DOMAIN, CallerKind, check_caller_id, spiffe_id
from veilgate_server.crypto.keys import warn_if_others_can_read, write_private_file
from veilgate_server.crypto.tls import CertificateAuthority

__all__ = [
    "CA_CERTIFICATE_FILE",
    "CA_KEY_FILE",
    "TRUST_DOMAIN",
    "InstitutionCA",
    "institution_spiffe_id",
]

TRUST_DOMAIN: Final = DEFAULT_TRUST_DOMAIN
"""The SPIFFE trust domain used when the operator configures none."""

CA_CERTIFICATE_FILE: Final = "institution-ca.pem"
CA_KEY_FILE: Final = "institution-ca.key"

_CA_COMMON_NAME: Final = "Veilgate institution CA"
_MIN_RSA_BITS: Final = 2048
_BACKDATE: Final = dt.timedelta(minutes=5)  # tolerate a peer whose clock is slightly behind

_ClientPublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def institution_spiffe_id(trust_domain: str, institution_id: str) -> str:
    """``spiffe://<trust_domain>/institution/<institution_id>``; ValueError on a malformed part."""
    return spiffe_id(trust_domain, "institution", institution_id)


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _serial_hex(certificate: x509.Certificate) -> str:
    return f"{certificate.serial_number:x}"


def _check_client_key(key: object) -> _ClientPublicKey:
    """The key if it is one the gateway accepts for a client certificate; ConfigurationError otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return key
        raise ConfigurationError(f"the CSR's EC key is on {key.curve.name}; only P-256 is accepted")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= _MIN_RSA_BITS:
            return key
        raise ConfigurationError(f"the CSR's RSA key has {key.key_size} bits; at least {_MIN_RSA_BITS} are required")
    raise ConfigurationError("the CSR's key type is not accepted; use EC P-256, Ed25519 or RSA of 2048 bits or more")


@dataclass(frozen=True, slots=True)
class InstitutionCA:
    """The CA that issues institution client certificates. Use :meth:`load_or_create`."""

    authority: CertificateAuthority

    @classmethod
    def create(cls, *, now: dt.datetime) -> InstitutionCA:
        """A new CA held in memory only (tests, demos); :meth:`load_or_create` keeps it on disk."""
        return cls(CertificateAuthority.create(_CA_COMMON_NAME, now=now))

    @classmethod
    def load_or_create(cls, directory: Path, *, now: dt.datetime) -> InstitutionCA:
        """The CA stored in ``directory``, created there on first use.

        The key goes to ``institution-ca.key`` with mode 0600 and the certificate to
        ``institution-ca.pem``. If only one of the two files exists, nothing is overwritten: that is
        a :class:`~veilgate.errors.ConfigurationError` for the operator to resolve.
        """
        cert_path, key_path = directory / CA_CERTIFICATE_FILE, directory / CA_KEY_FILE
        if cert_path.exists() or key_path.exists():
            return cls._load(cert_path, key_path)
        ca = cls.create(now=now)
        try:
            write_private_file(key_path, _pem_private_key(ca.authority.key))
            cert_path.write_bytes(ca.certificate_pem)
        except OSError as e:
            raise ConfigurationError(f"cannot create the institution CA in {directory}: {e.strerror}") from e
        return ca

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path) -> InstitutionCA:
        warn_if_others_can_read(key_path, "institution CA key")  # whoever reads it can mint institutions
        try:
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        except OSError as e:
            raise ConfigurationError(f"cannot read institution CA file {e.filename}: {e.strerror}") from e
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ConfigurationError(f"the institution CA files in {cert_path.parent} are not valid PEM") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigurationError(f"{key_path} does not hold an EC private key")
        if _spki(key.public_key()) != _spki(certificate.public_key()):
            raise ConfigurationError(f"{key_path} does not match the certificate in {cert_path}")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigurationError(f"{cert_path} is not a CA certificate")
        return cls(CertificateAuthority(certificate, key))

    @property
    def certificate(self) -> x509.Certificate:
        return self.authority.certificate

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate, the trust root the gateway uses to verify client certificates."""
        return self.authority.certificate_pem

    def issue_client_certificate(
        self,
        caller_id: str,
        *,
        kind: CallerKind = "institution",
        trust_domain: str = TRUST_DOMAIN,
        now: dt.datetime,
        days: int = 397,
    ) -> tuple[bytes, bytes, str]:
        """A fresh P-256 key and a certificate for it naming the ``kind`` of caller ``caller_id``:
        (certificate PEM, private key PEM, serial hex)."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._issue(key.public_key(), caller_id, kind=kind, trust_domain=trust_domain, now=now, days=days)
        return certificate.public_bytes(serialization.Encoding.PEM), _pem_private_key(key), _serial_hex(certificate)

    def sign_csr(
        self,
        csr_pem: bytes,
        caller_id: str,
        *,
        kind: CallerKind = "institution",
        trust_domain: str = TRUST_DOMAIN,
        now: dt.datetime,
        days: int = 397,
    ) -> tuple[bytes, str]:
        """A certificate for the key in ``csr_pem``: (certificate PEM, serial hex).

        The CSR must be well formed and signed by its own key (proof of possession), and the key
        must be EC P-256, Ed25519 or RSA of at least 2048 bits; otherwise ConfigurationError.
        Everything else in the CSR (subject, SANs, extensions) is ignored.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise ConfigurationError("the CSR is not a valid PEM certificate signing request") from e
        try:
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ConfigurationError("the CSR's public key cannot be read") from e
        checked_key = _check_client_key(public_key)
        try:
            signature_valid = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ConfigurationError("the CSR's signature cannot be checked") from e
        if not signature_valid:
            raise ConfigurationError("the CSR's signature does not verify with its own key")
        certificate = self._issue(checked_key, caller_id, kind=kind, trust_domain=trust_domain, now=now, days=days)
        return certificate.public_bytes(serialization.Encoding.PEM), _serial_hex(certificate)

    def _issue(
        self,
        public_key: _ClientPublicKey,
        caller_id: str,
        *,
        kind: CallerKind,
        trust_domain: str,
        now: dt.datetime,
        days: int,
    ) -> x509.Certificate:
        check_caller_id(caller_id)
        uri = spiffe_id(trust_domain, kind, caller_id)
        if days < 1:
            raise ValueError("days must be at least 1")
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        ca_cert, ca_key = self.authority.certificate, self.authority.key
        # A certificate never outlives the CA that vouches for it.
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                        x509.NameAttribute(NameOID.COMMON_NAME, caller_id),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

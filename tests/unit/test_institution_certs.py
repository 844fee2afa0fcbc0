"""Institution client certificates: issued by the institution CA, for clientAuth, bound to exactly
one SPIFFE URI SAN chosen by the operator, whatever a CSR asks for."""

from __future__ import annotations

import datetime as dt
import logging
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from veilgate import AuditClient, CitizenClient, CitizenWallet, InstitutionClient, gateway_keys_from_jwks
from veilgate._internal import jose
from veilgate.errors import ConfigurationError
from veilgate_server.config import Settings
from veilgate_server.core.identity import CallerIdentity, identity_from_uri_sans
from veilgate_server.crypto.institutions import (
    CA_CERTIFICATE_FILE,
    CA_KEY_FILE,
    TRUST_DOMAIN,
    InstitutionCA,
    institution_spiffe_id,
)
from veilgate_server.crypto.keys import GatewaySigner
from veilgate_server.crypto.tls import CertificateAuthority, ensure_local_tls

NOW = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
BANK = "bank.qilu"


@pytest.fixture(scope="module")
def ca() -> InstitutionCA:
    return InstitutionCA.create(now=NOW)


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _path_validate(cert: x509.Certificate, ca: InstitutionCA) -> list[str]:
    """RFC 5280 path validation as a TLS server does it for a client (clientAuth EKU); the URI SANs."""
    verifier = PolicyBuilder().store(Store([ca.certificate])).time(NOW).build_client_verifier()
    verified = verifier.verify(cert, [])
    assert verified.subjects is not None
    return [name.value for name in verified.subjects if isinstance(name, x509.UniformResourceIdentifier)]


def _check_client_certificate(cert: x509.Certificate, ca: InstitutionCA, *, trust_domain: str = TRUST_DOMAIN) -> None:
    cert.verify_directly_issued_by(ca.certificate)  # raises on a bad signature or issuer mismatch
    assert _path_validate(cert, ca) == [institution_spiffe_id(trust_domain, BANK)]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(san)) == 1  # no DNS, IP or e-mail names: only the SPIFFE URI
    assert _uris(cert) == [institution_spiffe_id(trust_domain, BANK)]
    assert identity_from_uri_sans(_uris(cert), trust_domain=trust_domain) == CallerIdentity("institution", BANK)
    assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc


def _csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ed448.Ed448PrivateKey,
) -> bytes:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.other")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://veilgate.local/institution/bank.other"),
                    x509.UniformResourceIdentifier("spiffe://veilgate.local/department/tax"),
                    x509.DNSName("gateway.veilgate.local"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_spiffe_id() -> None:
    assert institution_spiffe_id("veilgate.local", BANK) == "spiffe://veilgate.local/institution/bank.qilu"
    with pytest.raises(ValueError, match="id must match"):
        institution_spiffe_id("veilgate.local", "Bank Qilu")


def test_issued_certificate_verifies_against_the_ca(ca: InstitutionCA) -> None:
    cert_pem, key_pem, serial_hex = ca.issue_client_certificate(BANK, trust_domain=TRUST_DOMAIN, now=NOW)

    cert = x509.load_pem_x509_certificate(cert_pem)
    _check_client_certificate(cert, ca)
    assert serial_hex == f"{cert.serial_number:x}"
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=397)


def test_serials_differ(ca: InstitutionCA) -> None:
    serials = {ca.issue_client_certificate(BANK, now=NOW)[2] for _ in range(5)}
    assert len(serials) == 5


def test_certificate_from_another_ca_does_not_verify(ca: InstitutionCA) -> None:
    other = InstitutionCA.create(now=NOW)
    cert = x509.load_pem_x509_certificate(other.issue_client_certificate(BANK, now=NOW)[0])
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(ca.certificate)
    with pytest.raises(VerificationError):
        _path_validate(cert, ca)


def test_custom_trust_domain(ca: InstitutionCA) -> None:
    cert_pem, _, _ = ca.issue_client_certificate(BANK, trust_domain="gov.jinan", now=NOW)
    _check_client_certificate(x509.load_pem_x509_certificate(cert_pem), ca, trust_domain="gov.jinan")


def test_validity_never_exceeds_the_ca(ca: InstitutionCA) -> None:
    cert_pem, _, _ = ca.issue_client_certificate(BANK, now=NOW, days=100_000)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["p256", "ed25519", "rsa2048"],
)
def test_sign_csr_ignores_requested_names_and_extensions(
    ca: InstitutionCA, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
) -> None:
    cert_pem, serial_hex = ca.sign_csr(_csr(key), BANK, trust_domain=TRUST_DOMAIN, now=NOW)

    cert = x509.load_pem_x509_certificate(cert_pem)
    _check_client_certificate(cert, ca)
    assert cert.public_key() == key.public_key()
    assert serial_hex == f"{cert.serial_number:x}"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == BANK


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (ec.generate_private_key(ec.SECP384R1()), "only P-256"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "at least 2048"),  # noqa: S505 (refused)
        (ed448.Ed448PrivateKey.generate(), "not accepted"),
    ],
    ids=["p384", "rsa1024", "ed448"],
)
def test_sign_csr_refuses_weak_or_unexpected_keys(
    ca: InstitutionCA,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed448.Ed448PrivateKey,
    message: str,
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ca.sign_csr(_csr(key), BANK, now=NOW)


def test_sign_csr_refuses_a_bad_signature(ca: InstitutionCA) -> None:
    pem = _csr(ec.generate_private_key(ec.SECP256R1()))
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ConfigurationError, match="signature"):
        ca.sign_csr(tampered, BANK, now=NOW)


def test_sign_csr_refuses_garbage(ca: InstitutionCA) -> None:
    with pytest.raises(ConfigurationError, match="not a valid PEM"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", BANK, now=NOW)


def test_sign_csr_checks_the_institution_id(ca: InstitutionCA) -> None:
    with pytest.raises(ValueError, match="id must match"):
        ca.sign_csr(_csr(ec.generate_private_key(ec.SECP256R1())), "bank/../x", now=NOW)


def test_load_or_create_persists_the_ca(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    created = InstitutionCA.load_or_create(directory, now=NOW)

    key_path = directory / CA_KEY_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert (directory / CA_CERTIFICATE_FILE).read_bytes() == created.certificate_pem

    loaded = InstitutionCA.load_or_create(directory, now=NOW + dt.timedelta(days=1))
    assert loaded.certificate_pem == created.certificate_pem
    cert = x509.load_pem_x509_certificate(loaded.issue_client_certificate(BANK, now=NOW)[0])
    _check_client_certificate(cert, created)


def test_institution_ca_is_not_the_server_ca(tmp_path: Path) -> None:
    ca = InstitutionCA.load_or_create(tmp_path, now=NOW)
    assert not (tmp_path / "ca.pem").exists()
    assert ca.certificate.subject.rfc4514_string() == "CN=Veilgate institution CA"


def test_load_refuses_a_half_present_ca(tmp_path: Path) -> None:
    InstitutionCA.load_or_create(tmp_path, now=NOW)
    (tmp_path / CA_KEY_FILE).unlink()
    with pytest.raises(ConfigurationError, match="cannot read"):
        InstitutionCA.load_or_create(tmp_path, now=NOW)
    assert not (tmp_path / CA_KEY_FILE).exists()


def test_load_refuses_a_mismatched_key(tmp_path: Path) -> None:
    InstitutionCA.load_or_create(tmp_path, now=NOW)
    other = CertificateAuthority.create("other", now=NOW)
    (tmp_path / CA_CERTIFICATE_FILE).write_bytes(other.certificate_pem)
    with pytest.raises(ConfigurationError, match="does not match"):
        InstitutionCA.load_or_create(tmp_path, now=NOW)


def test_load_refuses_garbage(tmp_path: Path) -> None:
    (tmp_path / CA_CERTIFICATE_FILE).write_bytes(b"not a certificate")
    (tmp_path / CA_KEY_FILE).write_bytes(b"not a key")
    with pytest.raises(ConfigurationError, match="not valid PEM"):
        InstitutionCA.load_or_create(tmp_path, now=NOW)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("root", "root_certificates (the gateway's CA) holds no complete PEM certificate"),
        ("chain", "certificate_chain (the institution's certificate) holds no complete PEM certificate"),
        ("key", "private_key (the institution's key) holds no complete PEM private key"),
        ("swapped", "certificate_chain (the institution's certificate) holds no complete PEM certificate"),
    ],
)
def test_sdk_clients_refuse_pem_that_holds_no_certificate_or_key(ca: InstitutionCA, damage: str, message: str) -> None:
    """Before connecting: gRPC would only fail every call as UNAVAILABLE, as if the gateway were down."""
    cert, key, _ = ca.issue_client_certificate(BANK, now=NOW)
    root = ca.certificate_pem
    given = {"root_certificates": root, "certificate_chain": cert, "private_key": key}
    if damage == "root":
        given["root_certificates"] = root[: len(root) // 2]  # a truncated copy
    elif damage == "chain":
        given["certificate_chain"] = b"not a certificate"
    elif damage == "key":
        given["private_key"] = key.replace(b"PRIVATE KEY-----", b"PUBLIC KEY-----")
    else:
        given["certificate_chain"], given["private_key"] = key, cert
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        InstitutionClient("localhost:1", **given)
    with InstitutionClient("localhost:1", root_certificates=root, certificate_chain=cert, private_key=key):
        pass  # whole PEM is taken; nothing connects until a call
    with pytest.raises(ConfigurationError, match="root_certificates"):
        CitizenClient("localhost:1", CitizenWallet.generate("c-1"), root_certificates=b"")
    with pytest.raises(ConfigurationError, match="root_certificates"):
        AuditClient.connect("localhost:1", root_certificates=cert[:-40], log_verifier_key="unused")


def test_a_gateway_key_others_can_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys" / "gateway-signing.key"
    path.parent.mkdir()
    first = GatewaySigner.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with caplog.at_level(logging.WARNING, logger="veilgate.keys"):
        assert GatewaySigner.load_or_create(path).key_id == first.key_id
        assert caplog.records == []
        path.chmod(0o644)
        assert GatewaySigner.load_or_create(path).key_id == first.key_id  # still served: a warning
    [warning] = caplog.records
    assert warning.getMessage() == f"gateway signing key {path} is mode 0644: other users can read it; chmod 600 it"


def test_tls_keys_others_can_read_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server's TLS key and, above all, the institution CA's key, which mints institutions."""
    now = dt.datetime.now(dt.UTC)
    files, _ = ensure_local_tls(tmp_path, now=now)
    InstitutionCA.load_or_create(tmp_path, now=now)
    with caplog.at_level(logging.WARNING, logger="veilgate.keys"):
        files.load()
        InstitutionCA.load_or_create(tmp_path, now=now)
        assert caplog.records == []
        files.private_key.chmod(0o640)
        (tmp_path / "institution-ca.key").chmod(0o644)
        files.load()
        InstitutionCA.load_or_create(tmp_path, now=now)
    assert [r.getMessage() for r in caplog.records] == [
        f"TLS server key {files.private_key} is mode 0640: other users can read it; chmod 600 it",
        f"institution CA key {tmp_path / 'institution-ca.key'} is mode 0644: other users can read it; chmod 600 it",
    ]


def _verifies(token: str, jwks_path: Path) -> bool:
    """Whether a key of the published JWKS, found by the token's kid, verifies it."""
    keys = {key.key_id: key.public_key for key in gateway_keys_from_jwks(jwks_path.read_bytes())}
    parsed = jose.unverified_claims(token, typ="veilgate-test+jwt")
    return parsed.kid in keys and bool(jose.verify_jws(parsed, public_key=keys[parsed.kid], typ="veilgate-test+jwt"))


def test_a_rotated_gateway_key_signs_no_more_but_what_it_signed_still_verifies(tmp_path: Path) -> None:
    settings = Settings.from_env(data_dir=str(tmp_path / "d"))
    first = settings.load_signer()
    signed_before = first.sign({"n": 1}, typ="veilgate-test+jwt")
    old_pem = settings.signing_key_path.read_bytes()

    second, retired_id = settings.rotate_signer(now=dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC))
    assert retired_id == first.key_id != second.key_id
    assert settings.signing_key_path.read_bytes() != old_pem  # the old private key is gone
    assert stat.S_IMODE(settings.signing_key_path.stat().st_mode) == 0o600
    assert not any(p.name.endswith(".new") for p in settings.signing_key_path.parent.iterdir())
    reloaded = settings.load_signer()  # as a restarted gateway would
    assert reloaded.key_id == second.key_id
    assert reloaded.published == ((second.key_id, second.public_key), (first.key_id, first.public_key))
    assert reloaded.retired[0].retired_at == "2026-11-27T08:00:00Z"
    assert _verifies(signed_before, settings.public_keys_path)
    assert _verifies(reloaded.sign({"n": 2}, typ="veilgate-test+jwt"), settings.public_keys_path)

    third, _ = settings.rotate_signer(now=dt.datetime(2026, 11, 28, tzinfo=dt.UTC))
    assert [key_id for key_id, _ in third.published] == [third.key_id, second.key_id, first.key_id]
    assert _verifies(signed_before, settings.public_keys_path)


def test_an_interrupted_rotation_leaves_a_gateway_that_starts_with_every_key_published(tmp_path: Path) -> None:
    settings = Settings.from_env(data_dir=str(tmp_path / "d"))
    first = settings.load_signer()
    staged = settings.signing_key_path.with_name("gateway-signing.key.new")
    staged.write_bytes(b"half a key")  # stopped before the new key replaced the old one
    assert settings.load_signer().key_id == first.key_id
    second, _ = settings.rotate_signer(now=dt.datetime.now(dt.UTC))
    assert [key_id for key_id, _ in settings.load_signer().published] == [second.key_id, first.key_id]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the retired gateway keys"),
        ('{"retired": [{"kid": "x"}]}', "are malformed"),
        ('{"retired": [{"kid": "not-its-id", "x": "' + "A" * 43 + '", "retired_at": "t"}]}', "id does not match"),
    ],
)
def test_a_retired_key_list_that_does_not_hold_together_is_refused(tmp_path: Path, content: str, message: str) -> None:
    settings = Settings.from_env(data_dir=str(tmp_path / "d"))
    settings.load_signer()
    settings.retired_keys_path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        settings.load_signer()


def test_there_is_no_key_to_rotate_before_the_first_one(tmp_path: Path) -> None:
    settings = Settings.from_env(data_dir=str(tmp_path / "d"))
    with pytest.raises(ConfigurationError, match="there is no gateway signing key at"):
        settings.rotate_signer(now=dt.datetime.now(dt.UTC))

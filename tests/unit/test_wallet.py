"""Wallet files, sealed boxes and offline delivery verification."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nacl.public
import nacl.signing
import pytest

from veilgate import CitizenWallet, GatewayKey, verify_delivery
from veilgate._internal import jose, sealed
from veilgate.consent import CONSENT_TYP, PolicyPin
from veilgate.delivery import DELIVERY_TYP, gateway_keys_from_jwks, request_binding
from veilgate.errors import DeliveryInvalid, WalletError

PASS = "a long enough passphrase"


@pytest.fixture
def wallet() -> CitizenWallet:
    return CitizenWallet.generate("370102199001011234")


def test_save_and_load_round_trip(tmp_path: Path, wallet: CitizenWallet) -> None:
    path = tmp_path / "w.json"
    wallet.save(path, PASS, kdf="interactive")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = CitizenWallet.load(path, PASS)
    assert loaded.public_identity() == wallet.public_identity()
    text = path.read_text()
    assert jose.b64url_encode(bytes(wallet._signing_key)) not in text
    assert jose.b64url_encode(bytes(wallet._encryption_key)) not in text


def test_wrong_passphrase_and_damage_look_alike(tmp_path: Path, wallet: CitizenWallet) -> None:
    path = tmp_path / "w.json"
    wallet.save(path, PASS, kdf="interactive")
    with pytest.raises(WalletError, match="wrong passphrase or damaged") as wrong:
        CitizenWallet.load(path, "not it")
    doc = json.loads(path.read_text())
    doc["secret"] = doc["secret"][:-4] + ("AAAA" if doc["secret"][-4:] != "AAAA" else "BBBB")
    path.write_text(json.dumps(doc))
    with pytest.raises(WalletError) as damaged:
        CitizenWallet.load(path, PASS)
    assert wrong.value.message == damaged.value.message


def test_edited_public_header_is_refused(tmp_path: Path, wallet: CitizenWallet) -> None:
    path = tmp_path / "w.json"
    wallet.save(path, PASS, kdf="interactive")
    doc = json.loads(path.read_text())
    doc["citizen_id"] = "110101199003074477"
    path.write_text(json.dumps(doc))
    with pytest.raises(WalletError):
        CitizenWallet.load(path, PASS)


def test_refuses_to_overwrite_and_to_load_garbage(tmp_path: Path, wallet: CitizenWallet) -> None:
    path = tmp_path / "w.json"
    wallet.save(path, PASS, kdf="interactive")
    with pytest.raises(WalletError, match="exists"):
        wallet.save(path, PASS, kdf="interactive")
    path.write_text("not json")
    with pytest.raises(WalletError):
        CitizenWallet.load(path, PASS)
    with pytest.raises(WalletError, match="could not read"):
        CitizenWallet.load(tmp_path / "missing.json", PASS)
    with pytest.raises(WalletError, match="empty"):
        wallet.save(tmp_path / "other.json", "", kdf="interactive")


def test_sealed_box_opens_only_for_its_recipient(wallet: CitizenWallet) -> None:
    box = sealed.seal(b"secret", recipient_public_key=wallet.encryption_public_key)
    assert sealed.open_sealed(box, private_key=wallet._encryption_key) == b"secret"
    with pytest.raises(DeliveryInvalid):
        sealed.open_sealed(box, private_key=nacl.public.PrivateKey.generate())
    with pytest.raises(DeliveryInvalid):
        sealed.open_sealed(box[:-1] + bytes([box[-1] ^ 1]), private_key=wallet._encryption_key)


def _delivery(signer: nacl.signing.SigningKey, citizen_id: str, request_token: str) -> str:
    claims = {
        "iss": "gw",
        "sub": citizen_id,
        "iat": 1,
        "jti": "d1",
        "request": request_binding(request_token),
        "watermark": "wm_1",
        "items": [
            {
                "id": "a.b",
                "department": "a",
                "as_of": "2026-10-01",
                "sensitivity": 2,
                "type": "int",
                "value": 3,
            }
        ],
    }
    return jose.sign_jws(
        claims, signing_key=signer, typ=DELIVERY_TYP, kid=jose.jwk_thumbprint(bytes(signer.verify_key))
    )


def test_delivery_verification(wallet: CitizenWallet) -> None:
    gateway = nacl.signing.SigningKey.generate()
    key = GatewayKey(jose.jwk_thumbprint(bytes(gateway.verify_key)), bytes(gateway.verify_key))
    signed = _delivery(gateway, wallet.citizen_id, "tok")
    box = sealed.seal(signed.encode(), recipient_public_key=wallet.encryption_public_key)
    delivery = wallet.open_delivery(box, gateway_keys=[key], request_token="tok")
    assert delivery.items[0].value == 3
    assert delivery.items[0].watermark == "wm_1"
    assert verify_delivery(signed, gateway_keys=[key]).citizen_id == wallet.citizen_id
    with pytest.raises(DeliveryInvalid, match="another citizen"):
        verify_delivery(signed, gateway_keys=[key], citizen_id="someone else")
    with pytest.raises(DeliveryInvalid, match="does not answer"):
        wallet.open_delivery(box, gateway_keys=[key], request_token="other")
    impostor = nacl.signing.SigningKey.generate()
    with pytest.raises(DeliveryInvalid):
        verify_delivery(
            signed,
            gateway_keys=[GatewayKey(jose.jwk_thumbprint(bytes(impostor.verify_key)), bytes(impostor.verify_key))],
        )
    with pytest.raises(DeliveryInvalid, match="thumbprint"):
        GatewayKey(key.key_id, bytes(impostor.verify_key))


def test_jwks_parsing() -> None:
    gateway = nacl.signing.SigningKey.generate()
    pub = bytes(gateway.verify_key)
    doc = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": jose.b64url_encode(pub), "kid": jose.jwk_thumbprint(pub)}]}
    assert gateway_keys_from_jwks(json.dumps(doc))[0].public_key == pub
    for bad in (
        "{}",
        '{"keys": []}',
        "[]",
        '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "!!", "kid": "k"}]}',
    ):
        with pytest.raises(DeliveryInvalid):
            gateway_keys_from_jwks(bad)


def test_a_consent_id_never_reads_as_a_command_line_option(wallet: CitizenWallet) -> None:
    """`veilgate wallet revoke --consent ID` takes the id as the next word, unless it starts with "-"
    (one base64url id in 64 would): the citizen could not revoke it as the CLI says to."""
    pin = PolicyPin("credit.consumer_loan", "a" * 64)
    ids = [
        jose.unverified_claims(
            wallet.consent_token(
                institution_id="bank-a", purpose="credit.consumer_loan", policies=[pin], max_uses=1, valid_for=60
            ),
            typ=CONSENT_TYP,
        ).claims["jti"]
        for _ in range(1000)
    ]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == 1000
    assert {len(i) for i in ids} == {32}

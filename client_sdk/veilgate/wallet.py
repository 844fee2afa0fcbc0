"""The citizen's wallet: an Ed25519 signing key and an X25519 encryption key, kept in a
passphrase-protected file.

The signing key proves the citizen to the gateway (request tokens, later consents); the encryption key
opens sealed deliveries. Both private keys live only here; the gateway stores the public halves at
enrollment.

Wallet file (JSON, version 1)::

    {"format": "veilgate-wallet", "version": 1, "citizen_id": "...",
     "public": {"signing_key": b64url, "encryption_key": b64url},
     "kdf": {"name": "argon2id13", "opslimit": int, "memlimit": int, "salt": b64url(16 bytes)},
     "secret": b64url(nonce(24) || XSalsa20-Poly1305(secret JSON))}

The secret JSON repeats the citizen id next to both private keys, so a file whose clear-text header
was edited (another id, another public key) fails to load. A wrong passphrase and a damaged file give
the same :class:`WalletError`.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import nacl.exceptions
import nacl.public
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from veilgate._internal import jose, sealed
from veilgate.consent import CONSENT_TYP, MAX_CONSENT_SECONDS, MAX_POLICIES, MAX_USES, PURPOSES, PolicyPin
from veilgate.delivery import DataDelivery, GatewayKey, verify_delivery
from veilgate.errors import DeliveryInvalid, RequestInvalid, TokenError, WalletError

__all__ = ["REQUEST_TYP", "CitizenWallet", "KdfStrength"]

REQUEST_TYP = "veilgate-request+jwt"
FORMAT = "veilgate-wallet"
VERSION = 1
KdfStrength = Literal["interactive", "moderate", "sensitive"]
_KDF_LIMITS: Mapping[str, tuple[int, int]] = {
    "interactive": (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    "sensitive": (nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE),
}
_MAX_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE
_UNREADABLE = "wallet could not be opened: wrong passphrase or damaged file"


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    if not passphrase:
        raise WalletError("a wallet passphrase must not be empty")
    return nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt, opslimit=opslimit, memlimit=memlimit
    )


def _consent_id() -> str:
    """A fresh consent id: 192 random bits in base64url, never starting with "-", which a command
    line would read as an option (`veilgate wallet revoke --consent ID`): one in 64 would."""
    while (consent_id := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return consent_id


class CitizenWallet:
    """A citizen's keys. Create with :meth:`generate`, persist with :meth:`save`, reopen with :meth:`load`."""

    def __init__(
        self, citizen_id: str, *, signing_key: nacl.signing.SigningKey, encryption_key: nacl.public.PrivateKey
    ) -> None:
        if not citizen_id or len(citizen_id) > 64 or not citizen_id.isprintable() or " " in citizen_id:
            raise WalletError("a citizen id is 1 to 64 printable characters, without spaces")
        self.citizen_id = citizen_id
        self._signing_key = signing_key
        self._encryption_key = encryption_key

    @classmethod
    def generate(cls, citizen_id: str) -> CitizenWallet:
        return cls(
            citizen_id,
            signing_key=nacl.signing.SigningKey.generate(),
            encryption_key=nacl.public.PrivateKey.generate(),
        )

    def with_new_keys(self) -> CitizenWallet:
        """Fresh keys for the same citizen (key rotation); enroll them with ``veilgate enroll --rotate``."""
        return CitizenWallet.generate(self.citizen_id)

    @property
    def signing_public_key(self) -> bytes:
        return bytes(self._signing_key.verify_key)

    @property
    def encryption_public_key(self) -> bytes:
        return bytes(self._encryption_key.public_key)

    def public_identity(self) -> dict[str, str]:
        """What the operator needs to enroll this wallet (no secrets): write it with json.dump."""
        return {
            "citizen_id": self.citizen_id,
            "signing_key": jose.b64url_encode(self.signing_public_key),
            "encryption_key": jose.b64url_encode(self.encryption_public_key),
        }

    # --- persistence ----------------------------------------------------------------------------

    def save(
        self, path: Path | str, passphrase: str, *, kdf: KdfStrength = "moderate", overwrite: bool = False
    ) -> None:
        """Write the wallet atomically with mode 0600; refuses to replace a file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise WalletError(f"{path} exists; refusing to overwrite a wallet")
        opslimit, memlimit = _KDF_LIMITS[kdf]
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        secret = jose.canonical_json(
            {
                "citizen_id": self.citizen_id,
                "signing_seed": jose.b64url_encode(bytes(self._signing_key)),
                "encryption_key": jose.b64url_encode(bytes(self._encryption_key)),
            }
        )
        box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
        document = {
            "format": FORMAT,
            "version": VERSION,
            "citizen_id": self.citizen_id,
            "public": {
                "signing_key": jose.b64url_encode(self.signing_public_key),
                "encryption_key": jose.b64url_encode(self.encryption_public_key),
            },
            "kdf": {
                "name": "argon2id13",
                "opslimit": opslimit,
                "memlimit": memlimit,
                "salt": jose.b64url_encode(salt),
            },
            "secret": jose.b64url_encode(bytes(box.encrypt(secret))),
        }
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(document, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise WalletError(f"could not write wallet {path}: {e.strerror}") from e

    @classmethod
    def load(cls, path: Path | str, passphrase: str) -> CitizenWallet:
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise WalletError(f"could not read wallet {path}: {e.strerror}") from e
        try:
            doc = jose.parse_json_object(raw)
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise WalletError(f"{path} is not a version {VERSION} Veilgate wallet")
            kdf = doc["kdf"]
            opslimit, memlimit = int(kdf["opslimit"]), int(kdf["memlimit"])
            if kdf["name"] != "argon2id13" or not (0 < opslimit <= _MAX_OPSLIMIT and 0 < memlimit <= _MAX_MEMLIMIT):
                raise WalletError(f"{path} uses unsupported key-derivation parameters")
            key = _derive(passphrase, jose.b64url_decode(kdf["salt"]), opslimit, memlimit)
            secret = jose.parse_json_object(nacl.secret.SecretBox(key).decrypt(jose.b64url_decode(doc["secret"])))
            wallet = cls(
                secret["citizen_id"],
                signing_key=nacl.signing.SigningKey(jose.b64url_decode(secret["signing_seed"])),
                encryption_key=nacl.public.PrivateKey(jose.b64url_decode(secret["encryption_key"])),
            )
            if wallet.public_identity() != {"citizen_id": doc["citizen_id"], **doc["public"]}:
                raise WalletError(_UNREADABLE)
        except WalletError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
            TokenError,
            nacl.exceptions.CryptoError,
        ) as e:
            raise WalletError(_UNREADABLE) from e
        return wallet

    # --- using the keys -------------------------------------------------------------------------

    def request_token(
        self,
        *,
        audience: str,
        operation: str,
        claims: Mapping[str, Any] | None = None,
        lifetime: int = 120,
        now: int | None = None,
    ) -> str:
        """A single-use request token for one call of ``operation`` on gateway ``audience``."""
        issued_at = int(time.time()) if now is None else now
        body: dict[str, Any] = dict(claims or {})
        body.update(
            iss=self.citizen_id,
            aud=audience,
            op=operation,
            jti=secrets.token_urlsafe(24),
            iat=issued_at,
            exp=issued_at + lifetime,
        )
        return jose.sign_jws(
            body,
            signing_key=self._signing_key,
            typ=REQUEST_TYP,
            kid=jose.jwk_thumbprint(self.signing_public_key),
        )

    def consent_token(
        self,
        *,
        institution_id: str,
        purpose: str,
        policies: Sequence[PolicyPin],
        max_uses: int,
        valid_for: int,
        not_before: int | None = None,
        now: int | None = None,
    ) -> str:
        """Sign a consent for ``institution_id`` to evaluate the pinned ``policies`` for ``purpose``,
        at most ``max_uses`` times, from ``not_before`` (default now) for ``valid_for`` seconds.
        Register it with the gateway, then hand it to the institution."""
        # What the gateway would refuse, refused here before anything is signed or sent.
        if purpose not in PURPOSES:
            raise RequestInvalid(f"purpose must be one of {sorted(PURPOSES)}")
        if type(max_uses) is not int or not 1 <= max_uses <= MAX_USES:
            raise RequestInvalid(f"max_uses must be from 1 to {MAX_USES}")
        if type(valid_for) is not int or not 1 <= valid_for <= MAX_CONSENT_SECONDS:
            raise RequestInvalid(f"valid_for must be from 1 second to {MAX_CONSENT_SECONDS // 86400} days")
        if not 1 <= len(policies) <= MAX_POLICIES:
            raise RequestInvalid(f"a consent pins 1 to {MAX_POLICIES} policies")
        issued_at = int(time.time()) if now is None else now
        start = issued_at if not_before is None else not_before
        claims = {
            "iss": self.citizen_id,
            "sub": self.citizen_id,
            "aud": institution_id,
            "jti": _consent_id(),
            "iat": issued_at,
            "nbf": start,
            "exp": start + valid_for,
            "purpose": purpose,
            "policies": [pin.to_json() for pin in policies],
            "max_uses": max_uses,
        }
        return jose.sign_jws(
            claims, signing_key=self._signing_key, typ=CONSENT_TYP, kid=jose.jwk_thumbprint(self.signing_public_key)
        )

    def open_delivery(
        self, sealed_delivery: bytes, *, gateway_keys: Sequence[GatewayKey], request_token: str | None = None
    ) -> DataDelivery:
        """Open a sealed delivery and verify the gateway's signature, subject and request binding."""
        signed = sealed.open_sealed(sealed_delivery, private_key=self._encryption_key)
        try:
            text = signed.decode("ascii")
        except UnicodeDecodeError as e:
            raise DeliveryInvalid("sealed delivery does not hold a JWS") from e
        return verify_delivery(text, gateway_keys=gateway_keys, citizen_id=self.citizen_id, request_token=request_token)

"""The gateway's Ed25519 signing key: created once, kept as PKCS#8 PEM (mode 0600), published by key id.

Deliveries (and later results and checkpoints) are JWS signed with this key. Its id is the RFC 7638
thumbprint of its public JWK, so any client can recompute the id from the published key and a
substituted key cannot keep the old id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from veilgate._internal import jose
from veilgate.errors import ConfigurationError

_log = logging.getLogger("veilgate.keys")

__all__ = ["GatewaySigner", "warn_if_others_can_read", "write_private_file"]


def warn_if_others_can_read(path: Path, what: str) -> None:
    """Log a warning when a private key file is readable or writable by anyone but its owner.
    Not a refusal: a container's mounted secret is often mode 0644 inside a private volume."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        _log.warning("%s %s is mode %04o: other users can read it; chmod 600 it", what, path, mode & 0o7777)


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and exactly ``data``; never replaces an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class GatewaySigner:
    """Signs with the gateway key. Construct with :meth:`load_or_create` or :meth:`from_seed`."""

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key
        # The same key in OpenSSL, for deliveries: Ed25519 hashes the whole signing input twice, and
        # OpenSSL's SHA-512 is faster than libsodium's (a 93 KB delivery: 331 against 458 µs of
        # CPU). libsodium is faster below about 10 KB (a result: 24 against 37 µs), so it signs the
        # rest. Ed25519 is deterministic: both give the same signature.
        self._large = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(signing_key))
        self.public_key = bytes(signing_key.verify_key)
        self.key_id = jose.jwk_thumbprint(self.public_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> GatewaySigner:
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load_or_create(cls, path: Path) -> GatewaySigner:
        if not path.exists():
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:
                write_private_file(path, pem)
            except FileExistsError:
                pass  # another process created it first: use theirs
            except OSError as e:
                raise ConfigurationError(f"cannot create gateway signing key {path}: {e.strerror}") from e
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise ConfigurationError(f"cannot read gateway signing key {path}: {e.strerror}") from e
        warn_if_others_can_read(path, "gateway signing key")
        try:
            loaded = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as e:
            raise ConfigurationError(f"cannot read gateway signing key {path}: not an unencrypted PKCS#8 PEM") from e
        if not isinstance(loaded, ed25519.Ed25519PrivateKey):
            raise ConfigurationError(f"gateway signing key {path} is not an Ed25519 key")
        return cls.from_seed(loaded.private_bytes_raw())

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        return jose.sign_jws(claims, signing_key=self._key, typ=typ, kid=self.key_id)

    def sign_payload(self, payload: bytes, *, typ: str) -> str:
        """Sign claims already encoded as canonical JSON (see :func:`veilgate._internal.jose.sign_jws_payload`)."""
        return jose.sign_jws_payload(payload, sign=self._large.sign, typ=typ, kid=self.key_id)

"""The gateway's Ed25519 signing key: created once, kept as PKCS#8 PEM (mode 0600), published by key id.

Deliveries and results are JWS signed with this key. Its id is the RFC 7638 thumbprint of its public
JWK, so any client can recompute the id from the published key and a substituted key cannot keep the
old id.

Rotation (:func:`rotate_gateway_key`) makes a new key the current one and destroys the old private
key; the old public key is kept in a list of retired keys beside it and still published, after the
current one, so that every delivery and result it signed still verifies.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from veilgate._internal import jose
from veilgate.errors import ConfigurationError

_log = logging.getLogger("veilgate.keys")

__all__ = [
    "GatewaySigner",
    "RetiredKey",
    "file_stamp",
    "load_retired_keys",
    "replace_durably",
    "rotate_gateway_key",
    "warn_if_others_can_read",
    "write_exclusively",
    "write_private_file",
]


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """A gateway key no longer used to sign, still published so that what it signed verifies."""

    key_id: str
    public_key: bytes
    retired_at: str  # RFC 3339, UTC


def warn_if_others_can_read(path: Path, what: str) -> None:
    """Log a warning when a private key file is readable or writable by anyone but its owner.
    Not a refusal: a container's mounted secret is often mode 0644 inside a private volume."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        _log.warning("%s %s is mode %04o: other users can read it; chmod 600 it", what, path, mode & 0o7777)


def file_stamp(*paths: Path) -> tuple[int, ...] | None:
    """The files' inodes, modification times and sizes, to tell that one was replaced (a rename) or
    rewritten in place since the last look; None while one of them is missing."""
    try:
        stats = [path.stat() for path in paths]
    except OSError:
        return None
    return tuple(value for st in stats for value in (st.st_ino, st.st_mtime_ns, st.st_size))


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and exactly ``data``; never replaces an existing file."""
    write_exclusively(path, data, private=True)


def write_exclusively(path: Path, data: bytes, *, private: bool) -> None:
    """Create ``path`` with exactly ``data``, mode 0600 when ``private`` (else 0644, less the umask);
    FileExistsError, and nothing written, when it exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_durably(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` and fsync their directory, so that the rename itself
    survives a power cut (a key file is replaced only once what depends on it is committed)."""
    os.replace(source, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class GatewaySigner:
    """Signs with the gateway key. Construct with :meth:`load_or_create` or :meth:`from_seed`."""

    def __init__(self, signing_key: nacl.signing.SigningKey, retired: Sequence[RetiredKey] = ()) -> None:
        self._key = signing_key
        # The same key in OpenSSL, for deliveries: Ed25519 hashes the whole signing input twice, and
        # OpenSSL's SHA-512 is faster than libsodium's (a 93 KB delivery: 331 against 458 µs of
        # CPU). libsodium is faster below about 10 KB (a result: 24 against 37 µs), so it signs the
        # rest. Ed25519 is deterministic: both give the same signature.
        self._large = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(signing_key))
        self.public_key = bytes(signing_key.verify_key)
        self.key_id = jose.jwk_thumbprint(self.public_key)
        self.retired = tuple(key for key in retired if key.key_id != self.key_id)

    @property
    def published(self) -> tuple[tuple[str, bytes], ...]:
        """(key id, public key) of every key that verifies what this gateway signed: the current
        one first, then the retired ones, newest first."""
        return ((self.key_id, self.public_key), *((key.key_id, key.public_key) for key in self.retired))

    @classmethod
    def from_seed(cls, seed: bytes) -> GatewaySigner:
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load_or_create(cls, path: Path, retired: Sequence[RetiredKey] = ()) -> GatewaySigner:
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
        return cls.load(path, retired)

    @classmethod
    def load(cls, path: Path, retired: Sequence[RetiredKey] = ()) -> GatewaySigner:
        """The key in ``path``; ConfigurationError when it cannot be read or is not an Ed25519 key."""
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
        return cls(nacl.signing.SigningKey(loaded.private_bytes_raw()), retired)

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> str:
        return jose.sign_jws(claims, signing_key=self._key, typ=typ, kid=self.key_id)

    def sign_payload(self, payload: bytes, *, typ: str) -> str:
        """Sign claims already encoded as canonical JSON (see :func:`veilgate._internal.jose.sign_jws_payload`)."""
        return jose.sign_jws_payload(payload, sign=self._large.sign, typ=typ, kid=self.key_id)


def load_retired_keys(path: Path) -> list[RetiredKey]:
    """The retired keys listed in ``path`` (none when it does not exist), newest first."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ConfigurationError(f"cannot read the retired gateway keys {path}: {e}") from e
    try:
        keys = [
            RetiredKey(entry["kid"], jose.b64url_decode(entry["x"]), entry["retired_at"]) for entry in doc["retired"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigurationError(f"the retired gateway keys {path} are malformed") from e
    for key in keys:
        if len(key.public_key) != 32 or jose.jwk_thumbprint(key.public_key) != key.key_id:
            raise ConfigurationError(f"the retired gateway keys {path} hold a key whose id does not match it")
    return keys


def _write_retired_keys(path: Path, keys: Sequence[RetiredKey]) -> None:
    doc = {
        "retired": [{"kid": k.key_id, "x": jose.b64url_encode(k.public_key), "retired_at": k.retired_at} for k in keys]
    }
    staged = path.with_name(path.name + ".new")
    staged.write_text(json.dumps(doc, indent=2) + "\n")
    with staged.open("rb") as f:
        os.fsync(f.fileno())
    replace_durably(staged, path)


def rotate_gateway_key(path: Path, retired_path: Path, *, now: dt.datetime) -> tuple[GatewaySigner, str]:
    """Make a new gateway key the current one: the old one's public key joins the retired keys (so
    that what it signed still verifies) and its private key is destroyed. Returns the new signer and
    the old key's id. Interrupted at any point, it leaves a gateway that starts with the old key or
    the new one, never without the old public key published."""
    if not path.exists():
        raise ConfigurationError(f"there is no gateway signing key at {path} to rotate")
    retired = load_retired_keys(retired_path)
    old = GatewaySigner.load_or_create(path, retired)
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)  # a rotation interrupted before it replaced the key
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        write_private_file(staged, pem)
        stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _write_retired_keys(retired_path, [RetiredKey(old.key_id, old.public_key, stamp), *old.retired])
        replace_durably(staged, path)  # the old private key is gone from here on
    except OSError as e:
        raise ConfigurationError(f"cannot rotate the gateway signing key in {path.parent}: {e.strerror}") from e
    return GatewaySigner.load_or_create(path, load_retired_keys(retired_path)), old.key_id

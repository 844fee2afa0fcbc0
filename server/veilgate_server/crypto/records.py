"""Records at rest: every citizen's values under a data key of their own, wrapped by the records key.

A department's record value never reaches the database in the clear. Each citizen gets a random
256-bit **data key** the first time a record of theirs is stored; the data key is kept only wrapped
(encrypted) by the gateway's **records key**, a 256-bit key in a file of the data directory
(``keys/records.key``) that the database never holds. Destroying a citizen's wrapped data key makes
every value of theirs unreadable for good (crypto-shredding), while the audit log, which holds no
record value, stays verifiable.

Both layers are AES-256-GCM (``cryptography``'s AEAD), each output a version byte, a random 96-bit
nonce and the ciphertext with its 128-bit tag. The associated data binds each ciphertext to its
place, so that a database writer cannot move one citizen's key or value to another citizen or item,
nor change a record's department or date without the read failing:

* wrapped data key: ``0x01 ‖ nonce ‖ AES-GCM(records key, data key, "veilgate/v1/data-key\\0" ‖ citizen id)``
* sealed value: ``0x01 ‖ nonce ‖ AES-GCM(data key, value JSON (UTF-8), "veilgate/v1/record\\0" ‖
  citizen id ‖ 0x00 ‖ item id ‖ 0x00 ‖ department ‖ 0x00 ‖ as_of (ISO date))``

None of the four fields may hold a NUL (the store refuses them), so the associated data is
unambiguous. Nonces are random: a citizen's data key seals a few hundred values in its life, far
below the 2^32 messages a random-nonce key allows.

The records key is named by its id, the first 16 hex characters of SHA-256("veilgate/v1/records-key-id\\0"
‖ key), stored beside every wrapped data key. The key file is one line, ``veilgate-records-key-v1:``
and the key in base64url.

Every failure to open is a :class:`RecordsKeyError`, an internal error: a caller of the gateway
learns nothing of it; the operator's log says what did not open, never which byte was wrong.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veilgate.errors import ConfigurationError, InternalError
from veilgate_server.crypto.keys import warn_if_others_can_read, write_private_file

__all__ = ["WRAPPED_DATA_KEY_LENGTH", "CitizenDataKey", "RecordsKey", "RecordsKeyError", "RecordsKeySource"]

_VERSION: Final = b"\x01"
_NONCE: Final = 12
_KEY: Final = 32
_TAG: Final = 16
WRAPPED_DATA_KEY_LENGTH: Final = 1 + _NONCE + _KEY + _TAG
_DATA_KEY_CONTEXT: Final = b"veilgate/v1/data-key\x00"
_RECORD_CONTEXT: Final = b"veilgate/v1/record\x00"
_FILE_PREFIX: Final = "veilgate-records-key-v1:"
_KEY_ID_CONTEXT: Final = b"veilgate/v1/records-key-id\x00"


class RecordsKeyError(InternalError):
    """A citizen's records cannot be opened with this records key: wrapped by another records key,
    or changed in the database. Says nothing more, by design."""


class CitizenDataKey:
    """One citizen's data key, unwrapped: seals and opens that citizen's record values."""

    __slots__ = ("_aead", "_prefix")

    def __init__(self, citizen_id: str, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._prefix = _RECORD_CONTEXT.decode() + citizen_id + "\x00"

    def seal(self, item_id: str, department: str, as_of: str, value_json: str, *, nonce: bytes | None = None) -> bytes:
        """The value, sealed to its place. ``nonce``: for known-answer tests only."""
        nonce = os.urandom(_NONCE) if nonce is None else nonce
        place = f"{self._prefix}{item_id}\x00{department}\x00{as_of}".encode()
        return _VERSION + nonce + self._aead.encrypt(nonce, value_json.encode(), place)

    def open(self, item_id: str, department: str, as_of: str, sealed: bytes) -> str:
        """The value JSON sealed at this place; :class:`RecordsKeyError` if it was not."""
        return self.open_many([(item_id, department, as_of, sealed)])[0]

    def open_many(self, rows: Iterable[tuple[str, str, str, bytes]]) -> list[str]:
        """:meth:`open` for each ``(item_id, department, as_of, sealed)``, in order: a delivery's 188
        values in one loop (about 0.9 µs each, most of it the AES-GCM call)."""
        decrypt, prefix = self._aead.decrypt, self._prefix
        opened = []
        try:
            for item_id, department, as_of, sealed in rows:
                if sealed[0] != 1:  # _VERSION
                    raise RecordsKeyError("could not read records: a stored value is not a sealed record")
                place = f"{prefix}{item_id}\x00{department}\x00{as_of}".encode()
                opened.append(decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], place).decode())
        except (InvalidTag, IndexError, ValueError):  # ValueError: a nonce cut short
            raise RecordsKeyError("could not read records: a stored value does not open with its data key") from None
        return opened


class RecordsKey:
    """The gateway's records key (the key-encryption key): wraps and unwraps citizens' data keys.

    Its ``key_id`` (16 hex characters of a SHA-256 over the key) is stored beside every wrapped data
    key, so that a gateway holding another records key says so instead of failing to decrypt.
    """

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY:
            raise ValueError("a records key is 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> RecordsKey:
        return cls(AESGCM.generate_key(bit_length=256))

    @classmethod
    def load_or_create(cls, path: Path) -> RecordsKey:
        """The key in ``path`` (``veilgate-records-key-v1:<base64url>``, mode 0600), made on first use.
        Every gateway serving one database must hold the same file."""
        if not path.exists():
            text = _FILE_PREFIX + base64.urlsafe_b64encode(os.urandom(_KEY)).decode().rstrip("=") + "\n"
            try:
                with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
                    write_private_file(path, text.encode())
            except OSError as e:
                raise ConfigurationError(f"cannot create the records key {path}: {e.strerror}") from e
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> RecordsKey:
        """The key in ``path``; ConfigurationError when it cannot be read or holds no records key."""
        try:
            text = path.read_text().strip()
        except OSError as e:
            raise ConfigurationError(f"cannot read the records key {path}: {e.strerror}") from e
        warn_if_others_can_read(path, "records key")
        encoded = text.removeprefix(_FILE_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
        except ValueError:
            key = b""
        if not text.startswith(_FILE_PREFIX) or len(key) != _KEY:
            raise ConfigurationError(f"{path} is not a records key (expected {_FILE_PREFIX}<32 bytes, base64url>)")
        return cls(key)

    def new_data_key(self, citizen_id: str, *, nonce: bytes | None = None) -> tuple[CitizenDataKey, bytes]:
        """A fresh data key for ``citizen_id`` and its wrapped form, to store. ``nonce``: for tests."""
        key = AESGCM.generate_key(bit_length=256)
        return CitizenDataKey(citizen_id, key), self.wrap(citizen_id, key, nonce=nonce)

    def wrap(self, citizen_id: str, data_key: bytes, *, nonce: bytes | None = None) -> bytes:
        nonce = os.urandom(_NONCE) if nonce is None else nonce
        return _VERSION + nonce + self._aead.encrypt(nonce, data_key, _DATA_KEY_CONTEXT + citizen_id.encode())

    def rewrap(self, citizen_id: str, wrapped: bytes, *, into: RecordsKey) -> bytes:
        """A citizen's data key, wrapped by this key, wrapped instead by ``into`` (a rotation)."""
        return into.wrap(citizen_id, self._unwrap_raw(citizen_id, wrapped))

    def unwrap(self, citizen_id: str, wrapped: bytes) -> CitizenDataKey:
        """The citizen's data key; :class:`RecordsKeyError` if ``wrapped`` is not theirs under this key."""
        return CitizenDataKey(citizen_id, self._unwrap_raw(citizen_id, wrapped))

    def _unwrap_raw(self, citizen_id: str, wrapped: bytes) -> bytes:
        if len(wrapped) != WRAPPED_DATA_KEY_LENGTH or wrapped[:1] != _VERSION:
            raise RecordsKeyError("could not read records: a stored data key is malformed")
        try:
            return self._aead.decrypt(
                wrapped[1 : 1 + _NONCE], wrapped[1 + _NONCE :], _DATA_KEY_CONTEXT + citizen_id.encode()
            )
        except InvalidTag:
            raise RecordsKeyError(
                "could not read records: a stored data key does not open with this records key"
            ) from None


RecordsKeySource: TypeAlias = RecordsKey | Callable[[], RecordsKey]
"""A records key, or a function that gives it (one that makes the key file on first use), for the
store to ask for only when it needs it."""

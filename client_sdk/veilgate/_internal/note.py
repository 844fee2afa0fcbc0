"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519, in the key formats of Go's
``golang.org/x/mod/sumdb/note``.

A signed note is a UTF-8 text ending in a newline, a blank line, then one or more signature lines::

    <text, ending in "\\n">
    \\n
    — <key name> base64(key hash (4 bytes, big-endian) || Ed25519 signature (64 bytes))\\n

The signature covers the text including its final newline, not the blank line. A key is named by the
pair (name, key hash), where the key hash is the first four bytes (big-endian) of
``SHA-256(name || "\\n" || 0x01 || public key)``; 0x01 is the Ed25519 signature type. Keys travel as
the same strings Go's ``note.GenerateKey`` prints, so Go tools and witnesses interoperate:

- verifier key: ``<name>+<hash as 8 hex digits>+base64(0x01 || 32-byte public key)``
- signer key:   ``PRIVATE+KEY+<name>+<hash>+base64(0x01 || 32-byte seed)`` (a secret)

Rules enforced by :func:`open_note` (the spec's MUSTs, plus the strictness of Habit 8):

- the whole note is valid UTF-8, at most :data:`MAX_NOTE_BYTES`, with no ASCII control character
  other than newline; the text is everything up to the **last** blank line;
- every signature line is well formed (em dash, space, valid name, one space, canonical base64 of at
  least 5 bytes), else the note is rejected, even if another signature would verify; at most
  :data:`MAX_SIGNATURES` lines;
- signatures whose (name, key hash) pair is not a trusted verifier are **ignored**, even if they
  share the name or the hash of a trusted key (spec);
- a signature by a trusted key **must** verify, else the whole note is rejected (the spec's SHOULD,
  taken as MUST);
- at least one signature by a trusted key must verify.

Every failure raises :class:`NoteInvalid`; :func:`open_note` raises nothing else, whatever its input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Final

import nacl.exceptions
import nacl.signing

from veilgate.errors import ConfigurationError

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "NoteInvalid",
    "NoteSigner",
    "NoteVerifier",
    "key_hash",
    "open_note",
]

MAX_NOTE_BYTES: Final = 1 << 20
"""Largest signed note accepted or produced, in UTF-8 bytes."""

MAX_SIGNATURES: Final = 100
"""Most signature lines accepted (the spec requires at least 16; Go's sumdb/note allows 100)."""

_ALG_ED25519: Final = 0x01
_SIG_PREFIX: Final = "— "  # em dash (U+2014), space
_PRIVATE_PREFIX: Final = "PRIVATE+KEY+"
_HASH_HEX: Final = re.compile(r"[0-9a-f]{8}")
_NAME_FORBIDDEN: Final = frozenset({"Zs", "Zl", "Zp", "Cc", "Cs"})  # spaces, controls, lone surrogates
_ED25519_SIGNATURE_BYTES: Final = 64


class NoteInvalid(ConfigurationError):
    """A signed note, or a note key string, was malformed or not signed by a trusted key.

    The signed notes Veilgate opens on its own side (the policy manifest, stored checkpoints) are
    operator-side artifacts, hence the :class:`ConfigurationError` family and its reason.
    """


def key_hash(name: str, public_key: bytes) -> int:
    """The note key hash (key ID) of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([_ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _is_valid_name(name: str) -> bool:
    """Non-empty, no Unicode space (Go's ``unicode.IsSpace``), no '+', no control character, valid UTF-8."""
    if not name or "+" in name:
        return False
    return not any(ch.isspace() or unicodedata.category(ch) in _NAME_FORBIDDEN for ch in name)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _b64decode_canonical(text: str) -> bytes | None:
    """Standard, padded base64 in its one canonical spelling; None otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None  # non-zero padding bits, or similar
    return raw


def _parse_key_body(body: str, what: str) -> tuple[str, int, bytes]:
    """Split ``<name>+<hash8hex>+<base64(0x01 || 32 bytes)>`` (the base64 may itself contain '+')."""
    parts = body.split("+", 2)
    if len(parts) != 3:
        raise NoteInvalid(f"malformed {what}: expected <name>+<hash>+<key>")
    name, hash_hex, key_b64 = parts
    if not _is_valid_name(name):
        raise NoteInvalid(f"malformed {what}: invalid key name")
    if not _HASH_HEX.fullmatch(hash_hex):
        raise NoteInvalid(f"malformed {what}: key hash must be 8 lowercase hex digits")
    raw = _b64decode_canonical(key_b64)
    if raw is None or not raw:
        raise NoteInvalid(f"malformed {what}: key is not canonical base64")
    if raw[0] != _ALG_ED25519:
        raise NoteInvalid(f"unsupported {what}: signature type {raw[0]:#04x} (only Ed25519, 0x01)")
    if len(raw) != 33:
        raise NoteInvalid(f"malformed {what}: an Ed25519 key is 32 bytes")
    return name, int(hash_hex, 16), raw[1:]


def _check_text(text: str) -> bytes:
    """The UTF-8 bytes of a note text, after checking the rules every note text must follow."""
    if not _is_utf8(text):
        raise NoteInvalid("note text is not valid UTF-8")
    if not text.endswith("\n"):
        raise NoteInvalid("note text must end with a newline")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise NoteInvalid("note text contains a control character other than newline")
    return text.encode("utf-8")


class NoteVerifier:
    """A trusted Ed25519 note key: its name, key hash and public key."""

    def __init__(self, name: str, public_key: bytes) -> None:
        if not _is_valid_name(name):
            raise NoteInvalid("invalid note key name: it must be non-empty, without spaces or '+'")
        if len(public_key) != 32:
            raise NoteInvalid("an Ed25519 public key is 32 bytes")
        self.name: Final = name
        self.public_key: Final = bytes(public_key)
        self.key_hash: Final = key_hash(name, self.public_key)
        self._key = nacl.signing.VerifyKey(self.public_key)

    @classmethod
    def from_verifier_key_string(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hash>+<base64(0x01 || public key)>``; the hash must match the key."""
        name, claimed_hash, public_key = _parse_key_body(vkey, "verifier key")
        verifier = cls(name, public_key)
        if verifier.key_hash != claimed_hash:
            raise NoteInvalid(f"verifier key {name}: key hash {claimed_hash:08x} does not match the key")
        return verifier

    def verifier_key_string(self) -> str:
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_hash:08x}+{encoded}"

    def _verifies(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != _ED25519_SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(message, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    def __repr__(self) -> str:
        return f"NoteVerifier({self.name}+{self.key_hash:08x})"


class NoteSigner:
    """An Ed25519 note signing key. Its :meth:`private_key_string` is a secret; keep it mode 0600."""

    def __init__(self, name: str, signing_key: nacl.signing.SigningKey) -> None:
        self._key = signing_key
        self._verifier = NoteVerifier(name, bytes(signing_key.verify_key))
        self.name: Final = name
        self.key_hash: Final = self._verifier.key_hash

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, nacl.signing.SigningKey.generate())

    @classmethod
    def from_ed25519_seed(cls, name: str, seed: bytes) -> NoteSigner:
        """A signer over an existing 32-byte Ed25519 seed (e.g. to sign checkpoints with a gateway key)."""
        if len(seed) != 32:
            raise NoteInvalid("an Ed25519 seed is 32 bytes")
        return cls(name, nacl.signing.SigningKey(seed))

    @classmethod
    def from_private_key_string(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>``; the hash must match the derived key."""
        if not skey.startswith(_PRIVATE_PREFIX):
            raise NoteInvalid("malformed signer key: it must start with PRIVATE+KEY+")
        name, claimed_hash, seed = _parse_key_body(skey[len(_PRIVATE_PREFIX) :], "signer key")
        signer = cls.from_ed25519_seed(name, seed)
        if signer.key_hash != claimed_hash:
            raise NoteInvalid(f"signer key {name}: key hash {claimed_hash:08x} does not match the key")
        return signer

    def private_key_string(self) -> str:
        encoded = base64.b64encode(bytes([_ALG_ED25519]) + bytes(self._key)).decode("ascii")
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_hash:08x}+{encoded}"

    def verifier(self) -> NoteVerifier:
        return self._verifier

    def verifier_key_string(self) -> str:
        return self._verifier.verifier_key_string()

    def sign(self, text: str) -> str:
        """The signed note: ``text``, a blank line and this key's signature line."""
        message = _check_text(text)
        signature = self._key.sign(message).signature
        blob = base64.b64encode(self.key_hash.to_bytes(4, "big") + signature).decode("ascii")
        note = f"{text}\n{_SIG_PREFIX}{self.name} {blob}\n"
        if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
            raise NoteInvalid(f"signed note would exceed {MAX_NOTE_BYTES} bytes")
        return note

    def __repr__(self) -> str:
        return f"NoteSigner({self.name}+{self.key_hash:08x})"


def _trusted(verifiers: Sequence[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    table: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        key = (verifier.name, verifier.key_hash)
        known = table.get(key)
        if known is not None and known.public_key != verifier.public_key:
            raise NoteInvalid(f"ambiguous trusted keys: two different keys are named {verifier.name}+{key[1]:08x}")
        table[key] = verifier
    return table


def open_note(note: str | bytes, *, verifiers: Sequence[NoteVerifier]) -> str:
    """Verify a signed note against trusted keys and return its text (with its final newline).

    Raises :class:`NoteInvalid` when the note is malformed, when a signature by a trusted key does not
    verify, or when no trusted key signed it. Signatures by other keys are ignored.
    """
    trusted = _trusted(verifiers)
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteInvalid(f"signed note is larger than {MAX_NOTE_BYTES} bytes")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NoteInvalid("signed note is not valid UTF-8") from e
    if len(note) > MAX_NOTE_BYTES or not _is_utf8(note) or len(note.encode("utf-8")) > MAX_NOTE_BYTES:
        raise NoteInvalid(f"signed note is not valid UTF-8 of at most {MAX_NOTE_BYTES} bytes")
    if any(ord(ch) < 0x20 and ch != "\n" for ch in note):
        raise NoteInvalid("signed note contains a control character other than newline")

    split = note.rfind("\n\n")
    if split < 0:
        raise NoteInvalid("signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteInvalid("signed note has no signature lines, or they do not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteInvalid(f"signed note has more than {MAX_SIGNATURES} signatures")

    message = text.encode("utf-8")
    verified: list[NoteVerifier] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise NoteInvalid(f"signature line {number} does not start with an em dash and a space")
        name, space, blob = line[len(_SIG_PREFIX) :].partition(" ")
        raw = _b64decode_canonical(blob) if space else None
        if not _is_valid_name(name) or raw is None or len(raw) < 5:
            raise NoteInvalid(f"signature line {number} is malformed")
        verifier = trusted.get((name, int.from_bytes(raw[:4], "big")))
        if verifier is None:
            continue  # unknown key: ignored, as the spec requires
        if not verifier._verifies(message, raw[4:]):
            raise NoteInvalid(f"signature by trusted key {verifier.name}+{verifier.key_hash:08x} does not verify")
        verified.append(verifier)
    if not verified:
        raise NoteInvalid("signed note carries no signature by a trusted key")
    return text

"""A narrow, strict JWS (RFC 7515) for Veilgate: compact serialization, EdDSA over Ed25519 only.

Veilgate's tokens, deliveries and results are all compact JWS with ``alg: EdDSA`` (RFC 8037). A
general JOSE library accepts far more than we need, and each extra accepted form is attack surface
(``alg: none``, HMAC-with-public-key confusion, keys fetched from ``jku``/``x5u``). So this module
accepts exactly one shape:

* three base64url segments without padding, each in canonical form (re-encoding gives the same text);
* a protected header that is a JSON object with ``alg`` = ``EdDSA``, the expected ``typ`` and optionally
  ``kid``, and no other member (so no ``crit``, ``jku``, ``x5u``, ``jwk``, ``x5c``, ``b64``...);
* a payload that is a JSON object with no duplicate member names;
* a 64-byte Ed25519 signature over ``ASCII(header) || '.' || ASCII(payload)``, checked by libsodium
  (which also rejects non-canonical signatures and small-order keys).

``typ`` separates the token kinds (request, consent, delivery, result) so that one kind can never be
replayed as another. Every failure raises :class:`veilgate.errors.TokenInvalid` with the same public
message; the specific cause is kept in ``__cause__``/``detail`` for the server log.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing
import pybase64

from veilgate.errors import TokenInvalid

__all__ = [
    "ALGORITHM",
    "MAX_TOKEN_BYTES",
    "ParsedJws",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "jwk_thumbprint",
    "parse_json_object",
    "sign_jws",
    "unverified_claims",
    "verify_jws",
]

ALGORITHM = "EdDSA"
MAX_TOKEN_BYTES = 16 * 1024
_ALLOWED_HEADER = frozenset({"alg", "typ", "kid"})
_PUBLIC_MESSAGE = "token is not a valid Veilgate JWS"


class _Rejected(Exception):
    """Internal cause of a TokenInvalid; its text is for the server log, never for the caller."""


def _invalid(detail: str) -> TokenInvalid:
    err = TokenInvalid(_PUBLIC_MESSAGE)
    err.__cause__ = _Rejected(detail)
    return err


def rejection_detail(err: BaseException) -> str:
    """The private cause of a TokenInvalid raised here, for logs and audit entries."""
    cause = err.__cause__
    return str(cause) if isinstance(cause, _Rejected) else type(err).__name__


# Base64 by pybase64 (SIMD): a delivery is tens of kilobytes, and the standard library's encoder
# (with its url-safe translation) and a regular expression over the text took about 0.2 ms each per
# 60 kB; pybase64 takes about 0.03 ms. The accepted language is unchanged (tests/unit/test_jose.py
# holds both functions to the standard library's on arbitrary input).


def b64url_encode(data: bytes) -> str:
    return pybase64.b64encode(data, altchars=b"-_").rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url, rejecting padding, foreign characters and non-canonical tails."""
    if len(text) % 4 == 1 or "=" in text or "+" in text or "/" in text:
        raise _invalid("segment is not unpadded base64url")
    try:
        # validate=True: any character outside the alphabet is an error, never skipped
        data = pybase64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise _invalid("segment is not unpadded base64url") from e
    if b64url_encode(data) != text:
        raise _invalid("segment is not canonical base64url")
    return data


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Rejected(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"non-standard JSON constant {name}")


# One decoder for every parse: json.loads with options builds a new one, a reference cycle each time.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def parse_json_object(data: bytes) -> dict[str, Any]:
    """Parse strict UTF-8 JSON that must be an object without duplicate names, NaN or Infinity."""
    try:
        value = _STRICT_JSON.decode(data.decode("utf-8"))
    except _Rejected as e:
        raise _invalid(str(e)) from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid("not valid UTF-8 JSON") from e
    if not isinstance(value, dict):
        raise _invalid("JSON value is not an object")
    if b"\\u" in data:  # only an escape can make a lone surrogate, which no UTF-8 can hold
        try:
            canonical_json(value)
        except UnicodeEncodeError as e:
            raise _invalid("a string escapes half of a surrogate pair: not Unicode text") from e
    return value


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8. Equal to RFC 8785 for our value set
    (strings, integers, booleans, null, lists, objects; no floats are ever put on the wire)."""
    return _CANONICAL.encode(value).encode()


# One encoder for every call: json.dumps with options builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def jwk_thumbprint(public_key: bytes) -> str:
    """RFC 7638 thumbprint of an Ed25519 OKP JWK (RFC 8037 §2): the key id used in ``kid``."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(public_key)}
    return b64url_encode(hashlib.sha256(canonical_json(jwk)).digest())


def sign_jws(claims: Mapping[str, Any], *, signing_key: nacl.signing.SigningKey, typ: str, kid: str | None) -> str:
    """Sign ``claims`` as a compact JWS with a header of exactly alg, typ and (when given) kid."""
    return sign_jws_payload(
        canonical_json(claims), sign=lambda data: signing_key.sign(data).signature, typ=typ, kid=kid
    )


def sign_jws_payload(payload: bytes, *, sign: Callable[[bytes], bytes], typ: str, kid: str | None) -> str:
    """:func:`sign_jws` for claims the caller already encoded as canonical JSON bytes; ``sign``
    makes the 64-byte Ed25519 signature of the signing input (any implementation of the key)."""
    header: dict[str, str] = {"alg": ALGORITHM, "typ": typ}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{b64url_encode(canonical_json(header))}.{b64url_encode(payload)}"
    return f"{signing_input}.{b64url_encode(sign(signing_input.encode('ascii')))}"


@dataclass(frozen=True, slots=True)
class ParsedJws:
    """A structurally valid JWS whose signature has not been checked yet."""

    header: Mapping[str, str]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")


def _parse(token: str, *, typ: str, max_bytes: int) -> ParsedJws:
    if not isinstance(token, str):
        raise _invalid("token is not text")
    if len(token) > max_bytes:
        raise _invalid("token exceeds the size limit")
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid("compact JWS has three segments")
    header = parse_json_object(b64url_decode(parts[0]))
    unknown = set(header) - _ALLOWED_HEADER
    if unknown:
        raise _invalid(f"forbidden header member(s) {sorted(unknown)}")
    if header.get("alg") != ALGORITHM:
        raise _invalid("alg must be EdDSA")
    if header.get("typ") != typ:
        raise _invalid(f"typ must be {typ}")
    if "kid" in header and not isinstance(header["kid"], str):
        raise _invalid("kid must be a string")
    claims = parse_json_object(b64url_decode(parts[1]))
    signature = b64url_decode(parts[2])
    if len(signature) != 64:
        raise _invalid("an Ed25519 signature is 64 bytes")
    return ParsedJws(
        header=header,
        claims=claims,
        signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
        signature=signature,
    )


def unverified_claims(token: str, *, typ: str, max_bytes: int = MAX_TOKEN_BYTES) -> ParsedJws:
    """Parse without checking the signature: only to find which key should verify it."""
    return _parse(token, typ=typ, max_bytes=max_bytes)


def verify_jws(
    token: str | ParsedJws, *, public_key: bytes, typ: str, max_bytes: int = MAX_TOKEN_BYTES
) -> Mapping[str, Any]:
    """Return the claims of a JWS of kind ``typ`` signed by ``public_key``; raise TokenInvalid otherwise.

    ``max_bytes`` bounds the work done on untrusted input; tokens are small, deliveries are not."""
    parsed = token if isinstance(token, ParsedJws) else _parse(token, typ=typ, max_bytes=max_bytes)
    if parsed.header.get("typ") != typ:
        raise _invalid(f"typ must be {typ}")
    try:
        nacl.signing.VerifyKey(public_key).verify(parsed.signing_input, parsed.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        pass
    else:
        return parsed.claims
    # Raised outside the handler, so that this is the detail and not the library's cause (see
    # rejection_detail).
    raise _invalid("signature does not verify")

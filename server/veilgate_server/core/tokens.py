"""Citizen request tokens: the rule set the gateway enforces before it does anything for a citizen.

A request token is a compact JWS (see :mod:`veilgate._internal.jose`) of ``typ`` ``veilgate-request+jwt``
signed with the citizen's *currently enrolled* Ed25519 key. Its claims:

==========  ==================================================================================
``iss``     the citizen id; selects the key that must have signed it
``aud``     this gateway's id — a token made for another gateway (or a test one) is refused
``op``      the full gRPC method name — a token for one operation cannot be spent on another
``jti``     16–128 characters of base64url alphabet; single use (the ledger records it)
``iat``     issue time, NumericDate; may be at most ``LEEWAY`` seconds in the future
``exp``     expiry, NumericDate; at most ``MAX_LIFETIME`` seconds after ``iat``
==========  ==================================================================================

plus the method's own optional claims. Anything else is refused: unknown claims are a sign of a
client built for another contract. Checks run in a fixed order — structure, key, signature, then the
claims — and until the signature verifies every failure looks the same to the caller. After it
verifies, the caller is proven to be the citizen, so the messages may say exactly what was wrong.

Pure: the clock reading and the key lookup are parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NewType

from veilgate._internal import jose
from veilgate.errors import (
    CitizenNotEnrolled,
    RequestInvalid,
    RequestTooLarge,
    TokenExpired,
    TokenInvalid,
    TokenLifetimeTooLong,
    TokenNotYetValid,
    TokenWrongAudience,
)
from veilgate.wallet import REQUEST_TYP

__all__ = [
    "LEEWAY",
    "MAX_LIFETIME",
    "MAX_LIST_CLAIM",
    "REQUEST_TYP",
    "CitizenId",
    "RequestClaims",
    "read_request_token",
]

CitizenId = NewType("CitizenId", str)

MAX_LIFETIME = 300
LEEWAY = 30
MAX_LIST_CLAIM = 256
_REQUIRED = frozenset({"iss", "aud", "op", "jti", "iat", "exp"})
_JTI = re.compile(r"[A-Za-z0-9_-]{16,128}")
_CITIZEN_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
# An Ed25519 public key (of the seed SHA-256("veilgate: the key of no enrolled citizen")): what a
# token whose issuer is not enrolled is checked against, for the time it takes, and then refused.
_UNENROLLED_KEY = bytes.fromhex("cb4a686ae256fbdd81393edcc4a43adbdb036e1f4a81c1651ee6135e52cc5bd0")


@dataclass(frozen=True, slots=True)
class RequestClaims:
    """The verified claims of a citizen request token."""

    citizen_id: CitizenId
    jti: str
    issued_at: int
    expires_at: int
    extra: Mapping[str, Any]

    def string_list(self, name: str) -> tuple[str, ...] | None:
        """An optional list-of-strings claim, validated; None when absent."""
        value = self.extra.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RequestInvalid(f"claim {name!r} must be a list of strings")
        if len(value) > MAX_LIST_CLAIM:
            raise RequestTooLarge(f"claim {name!r} names more than {MAX_LIST_CLAIM} entries")
        return tuple(dict.fromkeys(value))

    def positive_integer(self, name: str) -> int | None:
        """An optional claim holding a whole number from 1 to 2^63 - 1; None when absent."""
        value = self.extra.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**63:
            raise RequestInvalid(f"claim {name!r} must be a whole number from 1 to 2^63 - 1")
        return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**40:
        raise TokenInvalid(f"claim {name!r} must be a NumericDate in whole seconds")
    return value


def read_request_token(
    token: str,
    *,
    public_key_of: Callable[[CitizenId], bytes],
    gateway_id: str,
    operation: str,
    optional_claims: Collection[str],
    now: int,
) -> RequestClaims:
    """Verify ``token`` for ``operation`` at time ``now`` (seconds) and return its claims.

    ``public_key_of`` returns the citizen's enrolled Ed25519 key or raises CitizenNotEnrolled.
    Raises a TokenError subclass (or RequestTooLarge) and never anything else: a token whose issuer
    is not enrolled is TokenInvalid, exactly as one signed with the wrong key.
    """
    if len(token) > jose.MAX_TOKEN_BYTES:
        raise RequestTooLarge(f"request token exceeds {jose.MAX_TOKEN_BYTES} bytes")
    parsed = jose.unverified_claims(token, typ=REQUEST_TYP)
    issuer = parsed.claims.get("iss")
    if not isinstance(issuer, str) or not _CITIZEN_ID.fullmatch(issuer):
        raise TokenInvalid("token is not a valid Veilgate JWS")
    citizen_id = CitizenId(issuer)
    try:
        key = public_key_of(citizen_id)
    except CitizenNotEnrolled:
        # Not said: anyone could then learn who is enrolled by signing for an id with any key.
        # The signature is checked all the same (against a key nobody's token verifies with), so
        # that the answer takes as long as for an enrolled citizen's forged token.
        jose.verify_jws(parsed, public_key=_UNENROLLED_KEY, typ=REQUEST_TYP)
        raise TokenInvalid("token is not a valid Veilgate JWS") from None
    claims = jose.verify_jws(parsed, public_key=key, typ=REQUEST_TYP)

    # From here on the citizen is authenticated: errors may be specific.
    missing = _REQUIRED - set(claims)
    if missing:
        raise TokenInvalid(f"request token lacks claim(s) {sorted(missing)}")
    unknown = set(claims) - _REQUIRED - set(optional_claims)
    if unknown:
        raise TokenInvalid(f"request token has claim(s) this operation does not take: {sorted(unknown)}")
    if claims["aud"] != gateway_id:
        raise TokenWrongAudience("request token is addressed to another gateway")
    if claims["op"] != operation:
        raise TokenInvalid(f"request token was made for another operation, not {operation}")
    jti = claims["jti"]
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise TokenInvalid("claim 'jti' must be 16-128 base64url characters")
    issued_at, expires_at = _numeric_date(claims, "iat"), _numeric_date(claims, "exp")
    if expires_at <= issued_at:
        raise TokenInvalid("claim 'exp' must be after 'iat'")
    if expires_at - issued_at > MAX_LIFETIME:
        raise TokenLifetimeTooLong(f"request tokens may live at most {MAX_LIFETIME} seconds")
    if issued_at > now + LEEWAY:
        raise TokenNotYetValid("request token is issued in the future; check the device clock")
    if now >= expires_at + LEEWAY:
        raise TokenExpired("request token has expired; sign a new one")
    return RequestClaims(
        citizen_id=citizen_id,
        jti=jti,
        issued_at=issued_at,
        expires_at=expires_at,
        extra={k: v for k, v in claims.items() if k not in _REQUIRED},
    )

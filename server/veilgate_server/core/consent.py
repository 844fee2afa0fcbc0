"""Consent rules: what a citizen's consent token must say, and whether it allows one evaluation.

Two steps, both pure. :func:`read_consent_token` checks structure and the citizen's signature (with
the citizen's *currently enrolled* key, so rotating keys retires old consents) and the claim shapes;
the gateway runs it when the citizen registers a consent and again on every use (where a token
byte-identical to the registered one, whose citizen still has the key it verified with, is not
verified a second time: see :class:`VerifiedToken`). :func:`check_use`
then applies the rules that depend on the call: the caller is the institution named in ``aud``, the
purpose fits the institution's kind, the policy is pinned with the text loaded now, and the time
window holds. Uses, revocation and budgets are counted in the store, in the same transaction as the
evaluation (see ``ConsentLedger.spend_use_and_record``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veilgate._internal import jose
from veilgate.consent import CONSENT_TYP, MAX_CONSENT_SECONDS, MAX_POLICIES, MAX_USES, PURPOSES, PolicyPin
from veilgate.errors import (
    ConsentExpired,
    ConsentNotYetValid,
    ConsentPolicyChanged,
    ConsentPolicyNotCovered,
    ConsentPurposeNotAllowed,
    ConsentWrongInstitution,
    TokenInvalid,
)
from veilgate_server.core.tokens import LEEWAY, CitizenId

__all__ = [
    "CONSENT_ID_PATTERN",
    "ConsentClaims",
    "VerifiedToken",
    "check_use",
    "consent_id_claimed",
    "read_consent_token",
]

_REQUIRED = frozenset({"iss", "sub", "aud", "jti", "iat", "nbf", "exp", "purpose", "policies", "max_uses"})
_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
CONSENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")
"""What a consent id (its token's ``jti``) is: 16-128 base64url characters."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ConsentClaims:
    consent_id: str
    citizen_id: CitizenId
    institution_id: str
    purpose: str
    policies: tuple[PolicyPin, ...]
    issued_at: int
    not_before: int
    expires_at: int
    max_uses: int


def _int(claims: dict[str, Any], name: str, low: int, high: int) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TokenInvalid(f"consent claim {name!r} must be an integer from {low} to {high}")
    return value


def _pins(value: object) -> tuple[PolicyPin, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_POLICIES:
        raise TokenInvalid(f"consent claim 'policies' must list 1 to {MAX_POLICIES} policies")
    pins: list[PolicyPin] = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"id", "sha256"}:
            raise TokenInvalid("each consented policy is an object with exactly 'id' and 'sha256'")
        policy_id, digest = entry["id"], entry["sha256"]
        if not isinstance(policy_id, str) or not _ID.fullmatch(policy_id):
            raise TokenInvalid("a consented policy id is 1-64 characters of [0-9A-Za-z_.:-]")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise TokenInvalid("a consented policy sha256 is 64 lower-case hex digits")
        pins.append(PolicyPin(policy_id, digest))
    if len({p.id for p in pins}) != len(pins):
        raise TokenInvalid("a consent lists each policy once")
    return tuple(pins)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A consent token whose signature verified with ``key`` (when the citizen registered it)."""

    token: str
    key: bytes


def consent_id_claimed(parsed: jose.ParsedJws) -> str | None:
    """The consent id an unverified consent token claims (its ``jti``), if it is one at all: only to
    find the registered consent, never trusted before :func:`read_consent_token`."""
    jti = parsed.claims.get("jti")
    return jti if isinstance(jti, str) and CONSENT_ID_PATTERN.fullmatch(jti) else None


def read_consent_token(
    token: str | jose.ParsedJws,
    *,
    public_key_of: Callable[[CitizenId], bytes],
    verified: VerifiedToken | None = None,
) -> ConsentClaims:
    """Verify a consent's signature by its citizen's enrolled key and the shape of every claim.

    ``token`` is the compact JWS, or what :func:`veilgate._internal.jose.unverified_claims` parsed of
    it. When ``verified`` holds these very bytes and the key ``public_key_of`` gives is the one they
    verified with, the signature is not checked again: Ed25519 verification is deterministic, so it
    would give the same answer. Any other token or key (a rotated one) is verified as always."""
    parsed = token if isinstance(token, jose.ParsedJws) else jose.unverified_claims(token, typ=CONSENT_TYP)
    issuer = parsed.claims.get("iss")
    if not isinstance(issuer, str) or not _ID.fullmatch(issuer):
        raise TokenInvalid("token is not a valid Veilgate JWS")
    key = public_key_of(CitizenId(issuer))
    if verified is not None and verified.key == key and _same_token(verified.token, parsed):
        claims = dict(parsed.claims)
    else:
        claims = dict(jose.verify_jws(parsed, public_key=key, typ=CONSENT_TYP))

    missing, unknown = _REQUIRED - set(claims), set(claims) - _REQUIRED
    if missing:
        raise TokenInvalid(f"consent lacks claim(s) {sorted(missing)}")
    if unknown:
        raise TokenInvalid(f"consent has unknown claim(s) {sorted(unknown)}")
    if claims["sub"] != issuer:
        raise TokenInvalid("a citizen can consent only for themselves: 'sub' must equal 'iss'")
    institution, jti, purpose = claims["aud"], claims["jti"], claims["purpose"]
    if not isinstance(institution, str) or not _ID.fullmatch(institution):
        raise TokenInvalid("consent claim 'aud' must be one institution id")
    if not isinstance(jti, str) or not CONSENT_ID_PATTERN.fullmatch(jti):
        raise TokenInvalid("consent claim 'jti' must be 16-128 base64url characters")
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise TokenInvalid(f"consent purpose must be one of {sorted(PURPOSES)}")
    issued_at = _int(claims, "iat", 0, 2**40)
    not_before = _int(claims, "nbf", 0, 2**40)
    expires_at = _int(claims, "exp", 0, 2**40)
    if not expires_at > not_before:
        raise TokenInvalid("consent claim 'exp' must be after 'nbf'")
    if expires_at - not_before > MAX_CONSENT_SECONDS:
        raise TokenInvalid(f"a consent may last at most {MAX_CONSENT_SECONDS // 86400} days")
    return ConsentClaims(
        consent_id=jti,
        citizen_id=CitizenId(issuer),
        institution_id=institution,
        purpose=purpose,
        policies=_pins(claims["policies"]),
        issued_at=issued_at,
        not_before=not_before,
        expires_at=expires_at,
        max_uses=_int(claims, "max_uses", 1, MAX_USES),
    )


def _same_token(token: str, parsed: jose.ParsedJws) -> bool:
    """Whether ``parsed`` was parsed from exactly ``token``: its segments are canonical base64url
    (the parser refuses any other), so the signature's bytes spell its segment."""
    return token == f"{parsed.signing_input.decode('ascii')}.{jose.b64url_encode(parsed.signature)}"


def check_use(
    consent: ConsentClaims,
    *,
    institution_id: str,
    institution_kind: str,
    policy_id: str,
    policy_sha256: str,
    policy_purpose: str,
    now: int,
) -> None:
    """Raise the specific ConsentError when this consent does not allow this evaluation now."""
    if consent.institution_id != institution_id:
        raise ConsentWrongInstitution("this consent was given to another institution")
    if PURPOSES[consent.purpose] != institution_kind:
        raise ConsentPurposeNotAllowed(f"purpose {consent.purpose} is not open to a {institution_kind}")
    pin = next((p for p in consent.policies if p.id == policy_id), None)
    if pin is None:
        raise ConsentPolicyNotCovered(f"the consent does not cover policy {policy_id}")
    if policy_purpose != consent.purpose:
        raise ConsentPurposeNotAllowed(
            f"policy {policy_id} serves {policy_purpose}; the consent was given for {consent.purpose}"
        )
    if pin.sha256 != policy_sha256:
        raise ConsentPolicyChanged(f"policy {policy_id} changed since the consent was given; ask for a new consent")
    if now + LEEWAY < consent.not_before:
        raise ConsentNotYetValid("the consent is not valid yet")
    if now >= consent.expires_at + LEEWAY:
        raise ConsentExpired("the consent has expired")

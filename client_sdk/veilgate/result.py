"""Eligibility results: what an institution receives, and how anyone verifies one offline.

A result is a JWS (``typ`` ``veilgate-result+jwt``) signed by the gateway; its payload is described in
``proto/veilgate/v1/eligibility.proto``. It says what a reviewed policy decided — decision, bands, at
most four reason codes, and the date of each data source — and binds that to the consent, the policy
text (SHA-256) and the exact request (``request`` hash). It never holds a record value.
:func:`verify_result` is what a bank's auditor or a court would run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Any

from veilgate._internal import jose
from veilgate.delivery import GatewayKey
from veilgate.errors import ResultInvalid, TokenError

__all__ = ["DECISIONS", "RESULT_TYP", "EligibilityResult", "request_hash", "verify_result"]

RESULT_TYP = "veilgate-result+jwt"
DECISIONS = ("ELIGIBLE", "NOT_ELIGIBLE", "REFER")
MAX_REASONS = 4
_CLAIMS = frozenset(
    {
        "iss",
        "aud",
        "jti",
        "iat",
        "request_id",
        "request",
        "consent",
        "policy",
        "decision",
        "bands",
        "reasons",
        "data_as_of",
    }
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def request_hash(*, consent_id: str, policy_id: str, request_id: str, parameters: Mapping[str, str]) -> str:
    """base64url(SHA-256(canonical JSON)) of what was asked: the ``request`` claim of a result."""
    body = {"consent": consent_id, "parameters": dict(parameters), "policy": policy_id, "request_id": request_id}
    return jose.b64url_encode(hashlib.sha256(jose.canonical_json(body)).digest())


@dataclass(frozen=True, slots=True)
class EligibilityResult:
    """A verified result. ``signed_result`` is the evidence to keep with the credit or claim file."""

    result_id: str
    gateway_id: str
    institution_id: str
    request_id: str
    request: str
    consent_id: str
    policy_id: str
    policy_version: int
    policy_sha256: str
    decision: str
    bands: Mapping[str, str]
    reasons: tuple[str, ...]
    data_as_of: Mapping[str, date]
    issued_at: int
    key_id: str
    signed_result: str
    log_index: int | None = None
    """Receipt: this evaluation's entry in the audit log (see ``AuditClient.verify_receipt``)."""


def _str_map(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ResultInvalid(f"result claim {name!r} must map strings to strings")
    return value


def _typed(claims: Mapping[str, Any], name: str, kind: type) -> Any:
    value = claims.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ResultInvalid(f"result claim {name!r} is missing or of the wrong type")
    return value


def verify_result(
    signed_result: str | bytes,
    *,
    gateway_keys: Sequence[GatewayKey],
    institution_id: str | None = None,
    expected_request: str | None = None,
) -> EligibilityResult:
    """Check the gateway's signature and the result's shape; with ``institution_id`` and
    ``expected_request`` (see :func:`request_hash`) also that it answers that institution's request.
    ``signed_result`` is the compact JWS as text or ASCII bytes; space around it (a stored file's
    newline) is not part of it. Raises :class:`ResultInvalid` on any failure."""
    if isinstance(signed_result, bytes):
        try:
            signed_result = signed_result.decode("ascii")
        except UnicodeDecodeError:
            raise ResultInvalid("a signed result is ASCII text: these bytes are not") from None
    if not isinstance(signed_result, str):
        raise ResultInvalid("a signed result is the compact JWS, as text")
    signed_result = signed_result.strip()
    try:
        parsed = jose.unverified_claims(signed_result, typ=RESULT_TYP)
    except TokenError as e:
        raise ResultInvalid("this is not a signed eligibility result (a compact JWS)") from e
    key = next((k for k in gateway_keys if k.key_id == parsed.kid), None)
    if key is None:
        raise ResultInvalid("result is signed by a key that is not among the trusted gateway keys")
    try:
        claims = jose.verify_jws(parsed, public_key=key.public_key, typ=RESULT_TYP)
    except TokenError as e:
        raise ResultInvalid("result signature does not verify") from e
    if set(claims) != _CLAIMS:
        raise ResultInvalid("result claims are not the documented set")
    audience = _typed(claims, "aud", str)
    if institution_id is not None and audience != institution_id:
        raise ResultInvalid("result was issued to another institution")
    request = _typed(claims, "request", str)
    if expected_request is not None and request != expected_request:
        raise ResultInvalid("result does not answer this request")
    policy = _typed(claims, "policy", dict)
    decision = _typed(claims, "decision", str)
    if decision not in DECISIONS:
        raise ResultInvalid("result decision is not one of ELIGIBLE, NOT_ELIGIBLE, REFER")
    reasons = _typed(claims, "reasons", list)
    if len(reasons) > MAX_REASONS or not all(isinstance(r, str) for r in reasons):
        raise ResultInvalid(f"a result carries at most {MAX_REASONS} reason codes")
    as_of: dict[str, date] = {}
    for source, text in _str_map(claims["data_as_of"], "data_as_of").items():
        if not _DATE.fullmatch(text):
            raise ResultInvalid("data_as_of dates are YYYY-MM-DD")
        try:
            as_of[source] = date.fromisoformat(text)
        except ValueError as e:
            raise ResultInvalid("data_as_of holds an impossible date") from e
    return EligibilityResult(
        result_id=_typed(claims, "jti", str),
        gateway_id=_typed(claims, "iss", str),
        institution_id=audience,
        request_id=_typed(claims, "request_id", str),
        request=request,
        consent_id=_typed(claims, "consent", str),
        policy_id=_typed(policy, "id", str),
        policy_version=_typed(policy, "version", int),
        policy_sha256=_typed(policy, "sha256", str),
        decision=decision,
        bands=MappingProxyType(_str_map(claims["bands"], "bands")),
        reasons=tuple(reasons),
        data_as_of=MappingProxyType(as_of),
        issued_at=_typed(claims, "iat", int),
        key_id=key.key_id,
        signed_result=signed_result,
    )

"""Consent tokens: issued by the SDK, read and checked by the gateway's pure rules."""

from __future__ import annotations

import contextlib
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate import CitizenWallet
from veilgate._internal import jose
from veilgate.consent import CONSENT_TYP, PolicyPin
from veilgate.errors import (
    CitizenNotEnrolled,
    ConsentExpired,
    ConsentNotYetValid,
    ConsentPolicyChanged,
    ConsentPolicyNotCovered,
    ConsentPurposeNotAllowed,
    ConsentWrongInstitution,
    TokenError,
    TokenInvalid,
)
from veilgate_server.core.consent import ConsentClaims, VerifiedToken, check_use, consent_id_claimed, read_consent_token
from veilgate_server.core.tokens import CitizenId

NOW = 1_790_000_000
ALICE = CitizenWallet.generate("370102199001011234")
PIN = PolicyPin("credit.consumer_loan", "ab" * 32)
OTHER_PIN = PolicyPin("credit.mortgage_prequal", "cd" * 32)


def _keys(citizen_id: CitizenId) -> bytes:
    if citizen_id != ALICE.citizen_id:
        raise CitizenNotEnrolled("no such citizen")
    return ALICE.signing_public_key


def consent(wallet: CitizenWallet = ALICE, **kw: Any) -> ConsentClaims:
    args: dict[str, Any] = dict(
        institution_id="bank-a",
        purpose="credit.consumer_loan",
        policies=[PIN, OTHER_PIN],
        max_uses=3,
        valid_for=3600,
        now=NOW,
    )
    args.update(kw)
    return read_consent_token(wallet.consent_token(**args), public_key_of=_keys)


def use(claims: ConsentClaims, **kw: Any) -> None:
    args: dict[str, Any] = dict(
        institution_id="bank-a",
        institution_kind="bank",
        policy_id=PIN.id,
        policy_sha256=PIN.sha256,
        policy_purpose="credit.consumer_loan",
        now=NOW + 10,
    )
    args.update(kw)
    check_use(claims, **args)


def test_a_valid_consent_reads_back_and_allows_its_use() -> None:
    claims = consent()
    assert (claims.citizen_id, claims.institution_id, claims.max_uses) == (ALICE.citizen_id, "bank-a", 3)
    assert claims.policies == (PIN, OTHER_PIN)
    use(claims)
    use(claims, policy_id=OTHER_PIN.id, policy_sha256=OTHER_PIN.sha256)
    with pytest.raises(ConsentPurposeNotAllowed, match=r"serves credit\.mortgage"):
        use(claims, policy_id=OTHER_PIN.id, policy_sha256=OTHER_PIN.sha256, policy_purpose="credit.mortgage")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"institution_id": "bank-b"}, ConsentWrongInstitution),
        ({"institution_kind": "insurer"}, ConsentPurposeNotAllowed),
        ({"policy_id": "insurance.inpatient_claim"}, ConsentPolicyNotCovered),
        ({"policy_sha256": "ef" * 32}, ConsentPolicyChanged),
        ({"now": NOW + 3600 + 30}, ConsentExpired),
    ],
)
def test_each_refusal_has_its_own_reason(change: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        use(consent(), **change)


def test_not_yet_valid() -> None:
    later = consent(not_before=NOW + 1000)
    with pytest.raises(ConsentNotYetValid):
        use(later)
    use(later, now=NOW + 1000)


def test_signature_must_be_the_enrolled_key() -> None:
    with pytest.raises(TokenInvalid):
        consent(CitizenWallet.generate(ALICE.citizen_id))
    with pytest.raises(CitizenNotEnrolled):
        consent(CitizenWallet.generate("110101199003074477"))


def test_a_request_token_is_not_a_consent() -> None:
    request = ALICE.request_token(audience="gw", operation="/x", now=NOW)
    with pytest.raises(TokenInvalid):
        read_consent_token(request, public_key_of=_keys)


def _signed(claims: dict[str, Any]) -> str:
    return jose.sign_jws(claims, signing_key=ALICE._signing_key, typ=CONSENT_TYP, kid=None)


BASE: dict[str, Any] = {
    "iss": ALICE.citizen_id,
    "sub": ALICE.citizen_id,
    "aud": "bank-a",
    "jti": "c" * 24,
    "iat": NOW,
    "nbf": NOW,
    "exp": NOW + 60,
    "purpose": "credit.consumer_loan",
    "policies": [PIN.to_json()],
    "max_uses": 1,
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sub": "someone-else"}, "themselves"),
        ({"purpose": "marketing"}, "purpose"),
        ({"max_uses": 0}, "max_uses"),
        ({"max_uses": 101}, "max_uses"),
        ({"max_uses": True}, "max_uses"),
        ({"exp": NOW}, "after"),
        ({"exp": NOW + 91 * 86400}, "at most"),
        ({"policies": []}, "policies"),
        ({"policies": [PIN.to_json(), PIN.to_json()]}, "once"),
        ({"policies": [{"id": "x", "sha256": "AB" * 32}]}, "hex"),
        ({"policies": [{"id": "x"}]}, "exactly"),
        ({"aud": ["bank-a", "bank-b"]}, "one institution"),
        ({"extra": 1}, "unknown"),
        ({"jti": None}, "lacks"),
    ],
)
def test_malformed_consents_are_refused(change: dict[str, Any], match: str) -> None:
    claims = {**BASE, **change}
    claims = {k: v for k, v in claims.items() if v is not None}
    with pytest.raises(TokenInvalid, match=match):
        read_consent_token(_signed(claims), public_key_of=_keys)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(BASE), "x"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=30) | st.lists(st.text(max_size=4), max_size=3),
    )
)
def test_arbitrary_signed_consents_raise_only_token_errors(change: dict[str, Any]) -> None:
    with contextlib.suppress(TokenError, CitizenNotEnrolled):
        read_consent_token(_signed({**BASE, **change}), public_key_of=_keys)


# --- a token verified before (at registration) -----------------------------------------------------


def _forged(token: str) -> str:
    """``token`` with its claims changed (more uses) and its signature kept: it verifies with no key."""
    header, _, signature = token.split(".")
    claims = jose.unverified_claims(token, typ=CONSENT_TYP).claims
    return f"{header}.{jose.b64url_encode(jose.canonical_json({**claims, 'max_uses': 100}))}.{signature}"


def test_a_token_verified_before_with_the_enrolled_key_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    token = ALICE.consent_token(
        institution_id="bank-a", purpose="credit.consumer_loan", policies=[PIN], max_uses=3, valid_for=3600, now=NOW
    )
    verified = VerifiedToken(token, ALICE.signing_public_key)
    expected = read_consent_token(token, public_key_of=_keys)

    def no_verification(*_: object) -> None:
        raise AssertionError("the signature was verified again")

    monkeypatch.setattr(nacl.signing.VerifyKey, "verify", no_verification)
    assert read_consent_token(token, public_key_of=_keys, verified=verified) == expected
    parsed = jose.unverified_claims(token, typ=CONSENT_TYP)
    assert read_consent_token(parsed, public_key_of=_keys, verified=verified) == expected


def _refused_for_its_signature(token: str, public_key_of: Any, verified: VerifiedToken) -> None:
    with pytest.raises(TokenInvalid) as refused:
        read_consent_token(token, public_key_of=public_key_of, verified=verified)
    assert jose.rejection_detail(refused.value) == "signature does not verify"


def test_any_other_token_or_key_is_verified() -> None:
    token = ALICE.consent_token(
        institution_id="bank-a", purpose="credit.consumer_loan", policies=[PIN], max_uses=3, valid_for=3600, now=NOW
    )
    verified = VerifiedToken(token, ALICE.signing_public_key)
    forged = _forged(token)
    assert consent_id_claimed(jose.unverified_claims(forged, typ=CONSENT_TYP)) == consent_id_claimed(
        jose.unverified_claims(token, typ=CONSENT_TYP)
    )
    # The same consent id with other claims: verified, and refused.
    _refused_for_its_signature(forged, _keys, verified)
    # The very token, verified before with a key the citizen no longer has (rotated): verified again.
    rotated = ALICE.with_new_keys()
    _refused_for_its_signature(token, lambda _: rotated.signing_public_key, verified)
    # The registered header and claims with another signature.
    header, payload, _ = token.split(".")
    _refused_for_its_signature(f"{header}.{payload}.{jose.b64url_encode(bytes(64))}", _keys, verified)


def test_the_claims_of_a_token_verified_before_are_still_checked() -> None:
    token = _signed({**BASE, "max_uses": 0})
    with pytest.raises(TokenInvalid, match="max_uses"):
        read_consent_token(token, public_key_of=_keys, verified=VerifiedToken(token, ALICE.signing_public_key))


@pytest.mark.parametrize("jti", [None, 7, "short", "c" * 129, "has space" * 3])
def test_only_a_well_formed_consent_id_is_claimed(jti: object) -> None:
    claims = {**BASE, "jti": jti} if jti is not None else {k: v for k, v in BASE.items() if k != "jti"}
    assert consent_id_claimed(jose.unverified_claims(_signed(claims), typ=CONSENT_TYP)) is None
    assert consent_id_claimed(jose.unverified_claims(_signed(BASE), typ=CONSENT_TYP)) == BASE["jti"]

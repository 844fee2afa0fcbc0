"""Request-token rules: each refusal has its own reason, and the order of checks hides what it must."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate import CitizenWallet
from veilgate._internal import jose
from veilgate.errors import (
    CitizenNotEnrolled,
    RequestInvalid,
    RequestTooLarge,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenLifetimeTooLong,
    TokenNotYetValid,
    TokenWrongAudience,
)
from veilgate_server.core.tokens import CitizenId, RequestClaims, read_request_token

GATEWAY = "gw.test"
OP = "/veilgate.v1.CitizenService/GetMyData"
NOW = 1_790_000_000
ALICE = CitizenWallet.generate("370102199001011234")
MALLORY = CitizenWallet.generate("370102199001011234")


def _keys(citizen_id: CitizenId) -> bytes:
    if citizen_id != ALICE.citizen_id:
        raise CitizenNotEnrolled("no such citizen")
    return ALICE.signing_public_key


def read(token: str, *, now: int = NOW, optional: tuple[str, ...] = ("items",)) -> RequestClaims:
    return read_request_token(
        token, public_key_of=_keys, gateway_id=GATEWAY, operation=OP, optional_claims=optional, now=now
    )


def token(wallet: CitizenWallet = ALICE, **overrides: Any) -> str:
    lifetime = overrides.pop("lifetime", 120)
    now = overrides.pop("now", NOW)
    return wallet.request_token(
        audience=overrides.pop("aud", GATEWAY),
        operation=overrides.pop("op", OP),
        claims=overrides,
        lifetime=lifetime,
        now=now,
    )


def raw_token(claims: dict[str, Any], wallet: CitizenWallet = ALICE) -> str:
    return jose.sign_jws(claims, signing_key=wallet._signing_key, typ="veilgate-request+jwt", kid=None)


def test_valid_token_yields_claims() -> None:
    claims = read(token(items=["a", "b", "a"]))
    assert claims.citizen_id == ALICE.citizen_id
    assert claims.expires_at == NOW + 120
    assert claims.string_list("items") == ("a", "b")


def test_an_unknown_citizen_looks_like_any_bad_signature() -> None:
    """Else anyone could learn who is enrolled, by signing for an id with any key."""
    with pytest.raises(TokenInvalid) as unknown:
        read(token(CitizenWallet.generate("110101199003074477")))
    with pytest.raises(TokenInvalid) as forged:
        read(token(MALLORY))
    assert unknown.value.message == forged.value.message == "token is not a valid Veilgate JWS"


def test_signature_by_another_key_looks_like_any_bad_token() -> None:
    with pytest.raises(TokenInvalid) as info:
        read(token(MALLORY))
    assert info.value.message == "token is not a valid Veilgate JWS"


def test_wrong_audience() -> None:
    with pytest.raises(TokenWrongAudience):
        read(token(aud="other-gateway"))


def test_wrong_operation() -> None:
    with pytest.raises(TokenInvalid, match="another operation"):
        read(token(op="/veilgate.v1.CitizenService/Other"))


def test_expired_and_leeway() -> None:
    read(token(lifetime=60), now=NOW + 60 + 29)
    with pytest.raises(TokenExpired):
        read(token(lifetime=60), now=NOW + 60 + 30)


def test_issued_in_the_future() -> None:
    read(token(now=NOW + 30))
    with pytest.raises(TokenNotYetValid):
        read(token(now=NOW + 31))


def test_lifetime_at_most_five_minutes() -> None:
    read(token(lifetime=300))
    with pytest.raises(TokenLifetimeTooLong):
        read(token(lifetime=301))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"jti": "short"}, "jti"),
        ({"jti": "has spaces in it, not allowed"}, "jti"),
        ({"iat": "1790000000"}, "NumericDate"),
        ({"iat": True}, "NumericDate"),
        ({"exp": NOW - 10}, "after"),
        ({"extra_claim": 1}, "does not take"),
        ({"jti": None}, "lacks"),
    ],
)
def test_malformed_claims_after_signature(change: dict[str, Any], match: str) -> None:
    claims: dict[str, Any] = {
        "iss": ALICE.citizen_id,
        "aud": GATEWAY,
        "op": OP,
        "jti": "j" * 24,
        "iat": NOW,
        "exp": NOW + 60,
    }
    claims.update(change)
    claims = {k: v for k, v in claims.items() if v is not None}
    with pytest.raises(TokenInvalid, match=match):
        read(raw_token(claims))


def test_bad_issuer_is_vague() -> None:
    with pytest.raises(TokenInvalid):
        read(raw_token({"iss": 5, "aud": GATEWAY}))


def test_list_claims_are_checked() -> None:
    with pytest.raises(RequestInvalid):
        read(token(items="not-a-list")).string_list("items")
    with pytest.raises(RequestTooLarge):
        read(token(items=[f"i{n}" for n in range(257)])).string_list("items")


def test_oversized_token() -> None:
    with pytest.raises(RequestTooLarge):
        read("x" * (16 * 1024 + 1))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_request_tokens_raise_only_token_errors(text: str) -> None:
    with pytest.raises((TokenError, RequestTooLarge)):
        read(text)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["iss", "aud", "op", "jti", "iat", "exp", "items", "nbf", "x"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=40) | st.lists(st.text(max_size=5), max_size=3),
    )
)
def test_arbitrary_signed_claims_raise_only_token_errors(claims: dict[str, Any]) -> None:
    claims.setdefault("iss", ALICE.citizen_id)
    with contextlib.suppress(TokenError):  # anything else fails the test
        read(raw_token(claims))

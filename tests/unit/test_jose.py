"""The strict JWS: known-answer vectors, a maintained JOSE library as a cross-check, and fuzzing."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import OKPKey

from veilgate._internal import jose
from veilgate.errors import TokenInvalid
from veilgate_server.crypto.keys import GatewaySigner

# RFC 8032 §7.1, TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
# RFC 8037 Appendix A.3 (thumbprint) and A.4 (JWS) for the same key.
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
# Our own encoding, pinned: Ed25519 is deterministic, so any change to header layout, canonical JSON
# or base64url handling changes these bytes and fails this test.
PINNED_CLAIMS = {"iss": "370102199001011234", "aud": "veilgate.local", "n": 1, "zh": "济南"}
PINNED_JWS = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImtQcktfcW14VldhWVZBOXd3QkY2SXVvM3ZWeno3VHhIQ1R3WEJ5Z3JTNGsiLCJ0eXAiOiJ0ZXN0K2p3dCJ9."
    "eyJhdWQiOiJ2ZWlsZ2F0ZS5sb2NhbCIsImlzcyI6IjM3MDEwMjE5OTAwMTAxMTIzNCIsIm4iOjEsInpoIjoi5rWO5Y2XIn0."
    "_EhIlJnCLgi83FzGkUB4pX5T2Cp1IzHsfvc5YYuyi6FlBhk2h1cB-i2JxlP9VkBQq3UDHVeQQK_A4Mm48CC-Cw"
)

KEY = nacl.signing.SigningKey(RFC8032_SEED)


def test_rfc8032_test1_signature() -> None:
    assert bytes(KEY.verify_key) == RFC8032_PUBLIC
    assert KEY.sign(b"").signature == RFC8032_SIGNATURE


def test_rfc8037_thumbprint() -> None:
    assert jose.jwk_thumbprint(RFC8032_PUBLIC) == RFC8037_THUMBPRINT


def test_rfc8037_jws_signature_verifies_but_the_shape_is_refused() -> None:
    header, payload, signature = RFC8037_JWS.split(".")
    nacl.signing.VerifyKey(RFC8032_PUBLIC).verify(f"{header}.{payload}".encode(), jose.b64url_decode(signature))
    # Valid RFC 8037 JWS, but no typ and a non-JSON payload: not a Veilgate token.
    with pytest.raises(TokenInvalid):
        jose.verify_jws(RFC8037_JWS, public_key=RFC8032_PUBLIC, typ="test+jwt")


def test_pinned_encoding() -> None:
    token = jose.sign_jws(PINNED_CLAIMS, signing_key=KEY, typ="test+jwt", kid=RFC8037_THUMBPRINT)
    assert token == PINNED_JWS
    assert jose.verify_jws(token, public_key=RFC8032_PUBLIC, typ="test+jwt") == PINNED_CLAIMS


# RFC 9864 deprecates the polymorphic "EdDSA" name in favour of "Ed25519"; our wire contract still says
# EdDSA (DESIGN.md), which every JOSE library accepts today.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
def test_joserfc_verifies_ours_and_we_verify_joserfcs() -> None:
    jwk = OKPKey.import_key(
        {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": jose.b64url_encode(RFC8032_PUBLIC),
            "d": jose.b64url_encode(RFC8032_SEED),
        }
    )
    ours = jose.sign_jws(PINNED_CLAIMS, signing_key=KEY, typ="test+jwt", kid=None)
    assert json.loads(jws.deserialize_compact(ours, jwk, algorithms=["EdDSA"]).payload) == PINNED_CLAIMS
    theirs = jws.serialize_compact(
        {"alg": "EdDSA", "typ": "test+jwt"}, json.dumps(PINNED_CLAIMS).encode(), jwk, algorithms=["EdDSA"]
    )
    assert jose.verify_jws(theirs, public_key=RFC8032_PUBLIC, typ="test+jwt") == PINNED_CLAIMS


def _forge(header: dict[str, object], claims: dict[str, object] | bytes, key: nacl.signing.SigningKey = KEY) -> str:
    h = jose.b64url_encode(json.dumps(header).encode())
    p = jose.b64url_encode(claims if isinstance(claims, bytes) else json.dumps(claims).encode())
    sig = key.sign(f"{h}.{p}".encode()).signature
    return f"{h}.{p}.{jose.b64url_encode(sig)}"


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({"alg": "none", "typ": "t"}, {"a": 1}),
        ({"alg": "HS256", "typ": "t"}, {"a": 1}),
        ({"alg": "ES256", "typ": "t"}, {"a": 1}),
        ({"typ": "t"}, {"a": 1}),
        ({"alg": "EdDSA"}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "other"}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t", "jku": "https://evil/keys"}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t", "x5u": "https://evil/cert"}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t", "jwk": {"kty": "OKP"}}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t", "crit": ["exp"]}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t", "b64": False}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t", "kid": 7}, {"a": 1}),
        ({"alg": "EdDSA", "typ": "t"}, b"[1, 2]"),
        ({"alg": "EdDSA", "typ": "t"}, b'{"a": 1, "a": 2}'),
        ({"alg": "EdDSA", "typ": "t"}, b'{"a": NaN}'),
        ({"alg": "EdDSA", "typ": "t"}, b"\xff\xfe"),
    ],
)
def test_forbidden_shapes_are_refused_even_when_signed(header: dict[str, object], claims: dict[str, object]) -> None:
    with pytest.raises(TokenInvalid) as info:
        jose.verify_jws(_forge(header, claims), public_key=RFC8032_PUBLIC, typ="t")
    assert info.value.message == "token is not a valid Veilgate JWS"


def test_duplicate_header_member_is_refused() -> None:
    h = jose.b64url_encode(b'{"alg":"EdDSA","typ":"t","typ":"t"}')
    p = jose.b64url_encode(b'{"a":1}')
    token = f"{h}.{p}.{jose.b64url_encode(KEY.sign(f'{h}.{p}'.encode()).signature)}"
    with pytest.raises(TokenInvalid):
        jose.verify_jws(token, public_key=RFC8032_PUBLIC, typ="t")


@pytest.mark.parametrize("escaped", [rb'"\ud800"', rb'"a\uDFFF"', rb'["x", {"y": "\udc00"}]', rb'"\ude00\ud83d"'])
def test_a_signed_claim_escaping_half_a_surrogate_pair_is_refused(escaped: bytes) -> None:
    """Legal JSON, but not Unicode text: no UTF-8 can hold it, so nothing that stores or logs the
    claim could. It is refused with the token, like any other malformed claim."""
    h = jose.b64url_encode(b'{"alg":"EdDSA","typ":"t"}')
    p = jose.b64url_encode(b'{"consent":' + escaped + b"}")
    token = f"{h}.{p}.{jose.b64url_encode(KEY.sign(f'{h}.{p}'.encode()).signature)}"
    with pytest.raises(TokenInvalid):
        jose.verify_jws(token, public_key=RFC8032_PUBLIC, typ="t")
    whole = jose.b64url_encode(rb'{"consent":"\ud83d\ude00"}')  # a whole pair is text
    signed = f"{h}.{whole}.{jose.b64url_encode(KEY.sign(f'{h}.{whole}'.encode()).signature)}"
    assert jose.verify_jws(signed, public_key=RFC8032_PUBLIC, typ="t")["consent"] == "\U0001f600"


def test_wrong_key_and_flipped_bits_are_refused() -> None:
    token = jose.sign_jws({"a": 1}, signing_key=KEY, typ="t", kid=None)
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    with pytest.raises(TokenInvalid):
        jose.verify_jws(token, public_key=other, typ="t")
    for i in range(len(token)):
        if token[i] == ".":
            continue
        flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        with pytest.raises(TokenInvalid):
            jose.verify_jws(flipped, public_key=RFC8032_PUBLIC, typ="t")


def test_padding_and_non_canonical_base64_are_refused() -> None:
    token = jose.sign_jws({"a": 1}, signing_key=KEY, typ="t", kid=None)
    h, p, s = token.split(".")
    with pytest.raises(TokenInvalid):
        jose.verify_jws(f"{h}=.{p}.{s}", public_key=RFC8032_PUBLIC, typ="t")
    # The last character of a 64-byte signature carries 4 unused bits: setting one is non-canonical.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tweaked = s[:-1] + alphabet[alphabet.index(s[-1]) | 1]
    assert tweaked != s
    with pytest.raises(TokenInvalid):
        jose.verify_jws(f"{h}.{p}.{tweaked}", public_key=RFC8032_PUBLIC, typ="t")


def test_oversized_token_is_refused() -> None:
    with pytest.raises(TokenInvalid):
        jose.verify_jws("a" * (jose.MAX_TOKEN_BYTES + 1), public_key=RFC8032_PUBLIC, typ="t")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_only_ever_raises_token_invalid(text: str) -> None:
    with pytest.raises(TokenInvalid):
        jose.verify_jws(text, public_key=RFC8032_PUBLIC, typ="t")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=3, max_size=3))
def test_arbitrary_segments_only_ever_raise_token_invalid(parts: list[bytes]) -> None:
    token = ".".join(jose.b64url_encode(p) for p in parts)
    with pytest.raises(TokenInvalid):
        jose.verify_jws(token, public_key=RFC8032_PUBLIC, typ="t")


# --- base64url: pybase64 for speed, held to the standard library's language ---------------------------

_URL_SAFE = re.compile(r"[A-Za-z0-9_-]*")


def _reference_decode(text: str) -> bytes | None:
    """The decoder as written with the standard library: None where it refuses the text."""
    if not _URL_SAFE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if base64.urlsafe_b64encode(data).rstrip(b"=").decode() == text else None


def _decoded(text: str) -> bytes | None:
    try:
        return jose.b64url_decode(text)
    except TokenInvalid:
        return None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000))
def test_b64url_encoding_is_the_standard_librarys(data: bytes) -> None:
    encoded = jose.b64url_encode(data)
    assert encoded == base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    assert jose.b64url_decode(encoded) == data


_BASE64ISH = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/= \n.é", max_size=40)


@settings(max_examples=2000, deadline=None)
@given(_BASE64ISH | st.text(max_size=40) | st.binary(max_size=30).map(lambda b: jose.b64url_encode(b)))
def test_b64url_decoding_accepts_exactly_what_the_standard_library_does(text: str) -> None:
    assert _decoded(text) == _reference_decode(text)


def test_b64url_decoding_refuses_each_non_canonical_form() -> None:
    assert jose.b64url_decode("_-8") == b"\xff\xef"
    for text in ("_-8=", "/+8", "_-9", "_-8 ", "_-\u00e98", "_", "_-8\n", "Y\x00Q"):
        with pytest.raises(TokenInvalid):
            jose.b64url_decode(text)


# --- the gateway's signer: OpenSSL for deliveries, libsodium for the rest, one signature ---------------


def test_the_gateway_signs_a_delivery_as_the_pinned_vector() -> None:
    signer = GatewaySigner.from_seed(RFC8032_SEED)
    assert signer.sign_payload(jose.canonical_json(PINNED_CLAIMS), typ="test+jwt") == PINNED_JWS
    assert signer.sign(PINNED_CLAIMS, typ="test+jwt") == PINNED_JWS


def test_both_implementations_of_the_gateway_key_sign_alike_at_every_size() -> None:
    seed = os.urandom(32)
    signer = GatewaySigner.from_seed(seed)
    libsodium = nacl.signing.SigningKey(seed)
    for size in (1, 1_000, 10_000, 100_000):
        payload = jose.canonical_json({"blob": os.urandom(size).hex()})
        token = signer.sign_payload(payload, typ="veilgate-delivery+jwt")
        assert token == jose.sign_jws_payload(
            payload, sign=lambda data: libsodium.sign(data).signature, typ="veilgate-delivery+jwt", kid=signer.key_id
        )
        signing_input, _, signature = token.rpartition(".")
        nacl.signing.VerifyKey(signer.public_key).verify(signing_input.encode(), jose.b64url_decode(signature))

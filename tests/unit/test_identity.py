"""Caller identity from a verified client certificate's URI SANs: exactly one SPIFFE ID, strictly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.errors import PeerIdentityInvalid
from veilgate_server.core.identity import CallerIdentity, identity_from_uri_sans, spiffe_id

TD = "veilgate.local"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("spiffe://veilgate.local/institution/bank.qilu", CallerIdentity("institution", "bank.qilu")),
        (
            "spiffe://veilgate.local/department/household_registration",
            CallerIdentity("department", "household_registration"),
        ),
        ("spiffe://veilgate.local/institution/0", CallerIdentity("institution", "0")),
        ("spiffe://veilgate.local/institution/" + "a" * 64, CallerIdentity("institution", "a" * 64)),
    ],
)
def test_accepts_one_spiffe_id_of_this_trust_domain(uri: str, expected: CallerIdentity) -> None:
    assert identity_from_uri_sans([uri], trust_domain=TD) == expected


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ([], "no URI SAN"),
        (
            ["spiffe://veilgate.local/institution/a", "spiffe://veilgate.local/institution/b"],
            "more than one",
        ),
        (["spiffe://veilgate.local/institution/a", "https://bank.example/"], "more than one"),
        (["spiffe://other.local/institution/bank.qilu"], "trust domain"),
        (["spiffe://veilgate.local.evil/institution/bank.qilu"], "trust domain"),
        (["spiffe://veilgate.localinstitution/bank.qilu"], "trust domain"),
        (["SPIFFE://veilgate.local/institution/bank.qilu"], "trust domain"),
        (["spiffe://VEILGATE.local/institution/bank.qilu"], "trust domain"),
        (["spiffe://user@veilgate.local/institution/bank.qilu"], "trust domain"),
        (["spiffe://veilgate.local:443/institution/bank.qilu"], "trust domain"),
        (["https://veilgate.local/institution/bank.qilu"], "trust domain"),
        (["spiffe://veilgate.local/institution/bank.qilu/extra"], "path"),
        (["spiffe://veilgate.local/institution/bank.qilu/"], "path"),
        (["spiffe://veilgate.local//institution/bank.qilu"], "path"),
        (["spiffe://veilgate.local/institution"], "path"),
        (["spiffe://veilgate.local/"], "path"),
        (["spiffe://veilgate.local/citizen/370102199001011234"], "unknown kind"),
        (["spiffe://veilgate.local/Institution/bank.qilu"], "unknown kind"),
        (["spiffe://veilgate.local/institution/"], "malformed id"),
        (["spiffe://veilgate.local/institution/Bank"], "malformed id"),
        (["spiffe://veilgate.local/institution/.bank"], "malformed id"),
        (["spiffe://veilgate.local/institution/bank%2Fx"], "malformed id"),
        (["spiffe://veilgate.local/institution/bank?x=1"], "malformed id"),
        (["spiffe://veilgate.local/institution/bank#frag"], "malformed id"),
        (["spiffe://veilgate.local/institution/bank\n"], "malformed id"),
        (["spiffe://veilgate.local/institution/bänk"], "malformed id"),
        (["spiffe://veilgate.local/institution/" + "a" * 65], "malformed id"),
    ],
)
def test_refuses_anything_else(uris: list[str], message: str) -> None:
    with pytest.raises(PeerIdentityInvalid, match=message):
        identity_from_uri_sans(uris, trust_domain=TD)


def test_spiffe_id_round_trips() -> None:
    uri = spiffe_id(TD, "department", "tax")
    assert uri == "spiffe://veilgate.local/department/tax"
    assert identity_from_uri_sans([uri], trust_domain=TD) == CallerIdentity("department", "tax")


@pytest.mark.parametrize("trust_domain", ["", "Veilgate.local", "veilgate.local/x", "a b"])
def test_bad_trust_domain_is_a_caller_bug(trust_domain: str) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        identity_from_uri_sans(["spiffe://veilgate.local/institution/a"], trust_domain=trust_domain)
    with pytest.raises(ValueError, match="trust domain"):
        spiffe_id(trust_domain, "institution", "a")


def test_spiffe_id_refuses_bad_ids() -> None:
    with pytest.raises(ValueError, match="id must match"):
        spiffe_id(TD, "institution", "Bank/../x")


_near_miss = st.builds(
    lambda prefix, kind, cid, tail: prefix + kind + cid + tail,
    st.sampled_from(["spiffe://veilgate.local/", "spiffe://veilgate.local", "spiffe://other/", "", "spiffe:///"]),
    st.sampled_from(["institution/", "department/", "citizen/", "", "/", "institution//"]),
    st.text(max_size=70),
    st.sampled_from(["", "/", "/x", "?q", "#f", "\x00"]),
)


@given(st.lists(st.one_of(st.text(), _near_miss), max_size=3))
@settings(max_examples=500, deadline=None)
def test_arbitrary_uri_lists_raise_only_peer_identity_invalid(uris: list[str]) -> None:
    try:
        identity = identity_from_uri_sans(uris, trust_domain=TD)
    except PeerIdentityInvalid:
        return
    # Whatever is accepted round-trips to exactly the one URI presented.
    assert uris == [spiffe_id(TD, identity.kind, identity.id)]

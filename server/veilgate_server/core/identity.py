"""Who is calling: the caller identity carried by a verified TLS client certificate.

Institutions (banks, insurers) and departments authenticate with mTLS. The TLS layer has already
checked the certificate chain against the gateway's institution CA; this module reads the identity
the certificate asserts, and nothing else: a request field never names the caller.

The identity is a SPIFFE ID (https://github.com/spiffe/spiffe, X509-SVID §2) in the certificate's
URI subject alternative name::

    spiffe://<trust-domain>/institution/<id>
    spiffe://<trust-domain>/department/<id>

Parsing is strict, in the SPIFFE spirit of "exactly one URI SAN": a certificate with no URI, with
several URIs (even if only one is a SPIFFE ID), from another trust domain, with a path of another
shape, or with an id outside ``[a-z0-9][a-z0-9._-]{0,63}`` is refused with
:class:`~veilgate.errors.PeerIdentityInvalid`. No percent-decoding, case folding or normalisation
takes place, so one identity has exactly one spelling.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from veilgate.errors import PeerIdentityInvalid

__all__ = [
    "CALLER_ID_PATTERN",
    "DEFAULT_TRUST_DOMAIN",
    "CallerIdentity",
    "CallerKind",
    "check_caller_id",
    "check_trust_domain",
    "identity_from_uri_sans",
    "spiffe_id",
]

CallerKind = Literal["institution", "department"]

_KINDS: Final[frozenset[str]] = frozenset(get_args(CallerKind))

CALLER_ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
"""Syntax of an institution or department id: lower-case ASCII, 1 to 64 characters."""

# SPIFFE trust domain names: lower-case letters, digits, dots, dashes and underscores.
DEFAULT_TRUST_DOMAIN: Final = "veilgate.local"
"""The trust domain of this gateway's SPIFFE IDs unless the operator sets another."""

_TRUST_DOMAIN_PATTERN: Final = re.compile(r"[a-z0-9._-]{1,255}")


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """An authenticated mTLS caller: an institution or a department, by id."""

    kind: CallerKind
    id: str


def check_caller_id(caller_id: str) -> None:
    """Raise ValueError unless ``caller_id`` has the syntax of an institution or department id."""
    if CALLER_ID_PATTERN.fullmatch(caller_id) is None:
        raise ValueError("an institution or department id must match [a-z0-9][a-z0-9._-]{0,63}")


def check_trust_domain(trust_domain: str) -> None:
    """Raise ValueError unless ``trust_domain`` is a valid SPIFFE trust domain name."""
    if _TRUST_DOMAIN_PATTERN.fullmatch(trust_domain) is None:
        raise ValueError("a trust domain must be 1 to 255 characters of [a-z0-9._-]")


def spiffe_id(trust_domain: str, kind: CallerKind, caller_id: str) -> str:
    """The SPIFFE ID ``spiffe://<trust_domain>/<kind>/<caller_id>``; ValueError on a bad part."""
    check_trust_domain(trust_domain)
    if kind not in _KINDS:
        raise ValueError(f"unknown caller kind {kind!r}")
    check_caller_id(caller_id)
    return f"spiffe://{trust_domain}/{kind}/{caller_id}"


def identity_from_uri_sans(uris: Sequence[str], *, trust_domain: str) -> CallerIdentity:
    """The caller named by the certificate's URI SANs ``uris``, which must be exactly one SPIFFE ID.

    ``trust_domain`` is the gateway's own configuration; an invalid one raises ValueError. Every
    problem with ``uris`` raises :class:`~veilgate.errors.PeerIdentityInvalid`.
    """
    check_trust_domain(trust_domain)
    if not uris:
        raise PeerIdentityInvalid("the client certificate carries no URI SAN identity")
    if len(uris) != 1:
        raise PeerIdentityInvalid("the client certificate carries more than one URI SAN; exactly one is allowed")
    (uri,) = uris
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        raise PeerIdentityInvalid("the client certificate's identity is not a SPIFFE ID of this trust domain")
    segments = uri[len(prefix) :].split("/")
    if len(segments) != 2:
        raise PeerIdentityInvalid("the client certificate's SPIFFE ID must have the path /<kind>/<id>")
    kind, caller_id = segments
    if kind == "institution":
        checked_kind: CallerKind = "institution"
    elif kind == "department":
        checked_kind = "department"
    else:
        raise PeerIdentityInvalid("the client certificate's SPIFFE ID names an unknown kind of caller")
    if CALLER_ID_PATTERN.fullmatch(caller_id) is None:
        raise PeerIdentityInvalid("the client certificate's SPIFFE ID carries a malformed id")
    return CallerIdentity(kind=checked_kind, id=caller_id)

"""Consent tokens: a citizen's signed permission for one institution to ask named questions.

A consent is a compact JWS (``typ`` ``veilgate-consent+jwt``, ``alg`` EdDSA) signed with the citizen's
enrolled Ed25519 key. Its claims:

=============  ====================================================================================
``iss``/``sub``  the citizen id (both; ``sub`` names whose data may be evaluated)
``aud``          the one institution id that may present it
``jti``          the consent id, 16–128 base64url characters; the citizen revokes by this id
``iat``          when it was signed
``nbf``/``exp``  the window in which it may be used; at most ``MAX_CONSENT_SECONDS`` long (the gateway
                 allows 30 seconds of clock skew at either end)
``purpose``      one code of :data:`PURPOSES`; the gateway checks it fits the institution's kind
``policies``     1–8 ``{"id", "sha256"}`` pins: the exact policy texts the citizen agreed to
``max_uses``     how many evaluations it allows, 1–100
=============  ====================================================================================

Pinning the policy's SHA-256 means a changed policy needs a new consent: the citizen agreed to a text,
not to a name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from veilgate.v1 import eligibility_pb2

__all__ = ["CONSENT_TYP", "MAX_CONSENT_SECONDS", "MAX_USES", "PURPOSES", "PolicyInfo", "PolicyPin"]

CONSENT_TYP = "veilgate-consent+jwt"
MAX_CONSENT_SECONDS = 90 * 24 * 3600
MAX_USES = 100
MAX_POLICIES = 8

PURPOSES: Mapping[str, str] = MappingProxyType(
    {
        "credit.consumer_loan": "bank",
        "credit.sme_loan": "bank",
        "credit.mortgage": "bank",
        "insurance.claim": "insurer",
        "insurance.underwriting": "insurer",
    }
)
"""Purpose code -> the kind of institution that may use it."""


@dataclass(frozen=True, slots=True)
class PolicyPin:
    """A policy id and the SHA-256 (lower-case hex) of the exact ``policy.yaml`` consented to."""

    id: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """A reviewed policy as the gateway publishes it: what it answers (decision, bands and reason
    codes), with which parameters, for which kinds of institution, from which catalog items
    (``inputs``: nothing else reaches it), and the sha256 a consent pins (:attr:`pin`)."""

    id: str
    version: int
    sha256: str
    purpose: str
    description: str
    parameters: Mapping[str, tuple[str, ...]]
    reason_codes: tuple[str, ...]
    bands: Mapping[str, tuple[str, ...]]
    inputs: tuple[str, ...] = ()
    institution_kinds: tuple[str, ...] = ()

    @property
    def pin(self) -> PolicyPin:
        """What a consent to this very text pins."""
        return PolicyPin(self.id, self.sha256)

    @classmethod
    def from_proto(cls, p: eligibility_pb2.PolicySummary) -> PolicyInfo:
        return cls(
            id=p.id,
            version=p.version,
            sha256=p.sha256,
            purpose=p.purpose,
            description=p.description,
            parameters={q.name: tuple(q.values) for q in p.parameters},
            reason_codes=tuple(p.reason_codes),
            bands={name: tuple(b.labels) for name, b in p.bands.items()},
            inputs=tuple(p.inputs),
            institution_kinds=tuple(p.institution_kinds),
        )

"""Data deliveries: what a citizen receives from GetMyData, and how anyone verifies it.

The gateway signs a JWS of ``typ`` ``veilgate-delivery+jwt`` (payload described in
``proto/veilgate/v1/citizen.proto``) and seals it to the citizen's X25519 key. After opening, the
citizen holds a signed document that anyone with the gateway's public key can check offline —
:func:`verify_delivery` does exactly that and is what a third party would call.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from veilgate._internal import jose
from veilgate.errors import DeliveryInvalid, TokenError

__all__ = [
    "DELIVERY_TYP",
    "DataDelivery",
    "DataItem",
    "GatewayKey",
    "gateway_keys_from_jwks",
    "request_binding",
    "verify_delivery",
]

DELIVERY_TYP = "veilgate-delivery+jwt"
MAX_DELIVERY_BYTES = 16 * 1024 * 1024
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def request_binding(request_token: str) -> str:
    """base64url(SHA-256(request token)): the ``request`` claim that ties a delivery to its request."""
    return jose.b64url_encode(hashlib.sha256(request_token.encode("ascii")).digest())


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """A gateway signing key as published by GetGatewayInfo (or a pinned copy of it)."""

    key_id: str
    public_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != 32 or jose.jwk_thumbprint(self.public_key) != self.key_id:
            raise DeliveryInvalid("gateway key id is not the RFC 7638 thumbprint of the key")


@dataclass(frozen=True, slots=True)
class DataItem:
    """One record about the citizen, as the owning department holds it."""

    id: str
    department: str
    as_of: date
    sensitivity: int
    type: str
    unit: str | None
    value: Any
    watermark: str


@dataclass(frozen=True, slots=True)
class DataDelivery:
    """A verified delivery. ``signed_jws`` is the evidence a citizen can hand to someone else."""

    gateway_id: str
    citizen_id: str
    delivery_id: str
    watermark: str
    issued_at: int
    key_id: str
    items: tuple[DataItem, ...]
    signed_jws: str
    log_index: int | None = None
    """Receipt: this delivery's entry in the audit log (see ``AuditClient.verify_receipt``)."""
    sealed: bytes | None = None
    """The sealed bytes as received; the log entry commits to their SHA-256."""

    def by_department(self) -> dict[str, list[DataItem]]:
        grouped: dict[str, list[DataItem]] = {}
        for item in self.items:
            grouped.setdefault(item.department, []).append(item)
        return grouped


def _field(obj: Mapping[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DeliveryInvalid(f"delivery field {name!r} is missing or of the wrong type")
    return value


def _date(text: str, name: str) -> date:
    if not _DATE.fullmatch(text):
        raise DeliveryInvalid(f"delivery field {name!r} is not a YYYY-MM-DD date")
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise DeliveryInvalid(f"delivery field {name!r} is not a real date") from e


def verify_delivery(
    signed_jws: str,
    *,
    gateway_keys: Sequence[GatewayKey],
    citizen_id: str | None = None,
    request_token: str | None = None,
) -> DataDelivery:
    """Check a delivery's gateway signature (and, when given, its subject and request binding).

    Raises :class:`DeliveryInvalid` on any failure; returns the typed delivery otherwise.
    """
    try:
        parsed = jose.unverified_claims(signed_jws, typ=DELIVERY_TYP, max_bytes=MAX_DELIVERY_BYTES)
        key = next((k for k in gateway_keys if k.key_id == parsed.kid), None)
        if key is None:
            raise DeliveryInvalid("delivery is signed by a key that is not among the trusted gateway keys")
        claims = jose.verify_jws(parsed, public_key=key.public_key, typ=DELIVERY_TYP)
    except TokenError as e:
        raise DeliveryInvalid("delivery signature does not verify") from e
    subject = _field(claims, "sub", str)
    if citizen_id is not None and subject != citizen_id:
        raise DeliveryInvalid("delivery is about another citizen")
    if request_token is not None and claims.get("request") != request_binding(request_token):
        raise DeliveryInvalid("delivery does not answer this request")
    watermark = _field(claims, "watermark", str)
    items = []
    for raw in _field(claims, "items", list):
        if not isinstance(raw, dict):
            raise DeliveryInvalid("delivery item is not an object")
        unit = raw.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise DeliveryInvalid("delivery field 'unit' is of the wrong type")
        if "value" not in raw:
            raise DeliveryInvalid("delivery item has no value")
        items.append(
            DataItem(
                id=_field(raw, "id", str),
                department=_field(raw, "department", str),
                as_of=_date(_field(raw, "as_of", str), "as_of"),
                sensitivity=_field(raw, "sensitivity", int),
                type=_field(raw, "type", str),
                unit=unit,
                value=raw["value"],
                watermark=watermark,
            )
        )
    return DataDelivery(
        gateway_id=_field(claims, "iss", str),
        citizen_id=subject,
        delivery_id=_field(claims, "jti", str),
        watermark=watermark,
        issued_at=_field(claims, "iat", int),
        key_id=key.key_id,
        items=tuple(items),
        signed_jws=signed_jws,
    )


def gateway_keys_from_jwks(text: str | bytes) -> list[GatewayKey]:
    """Read pinned gateway keys from a JWKS document (as ``veilgate serve`` publishes it)."""
    try:
        doc = jose.parse_json_object(text.encode() if isinstance(text, str) else text)
        keys = [
            GatewayKey(key_id=k["kid"], public_key=jose.b64url_decode(k["x"]))
            for k in doc["keys"]
            if k.get("kty") == "OKP" and k.get("crv") == "Ed25519"
        ]
    except (TokenError, KeyError, TypeError, AttributeError) as e:
        raise DeliveryInvalid("not a JWKS document of Ed25519 gateway keys") from e
    if not keys:
        raise DeliveryInvalid("the JWKS document holds no Ed25519 gateway key")
    return keys

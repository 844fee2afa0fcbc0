"""The gateway's operations, between the thin gRPC servicers and the pure core.

Each operation takes already-decoded request values, runs the core rules against the store and the
keys, and returns values for the servicer to encode. Nothing here knows about gRPC.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from veilgate.citizen import GET_MY_DATA
from veilgate.delivery import DELIVERY_TYP
from veilgate_server.core.catalog import Catalog
from veilgate_server.core.delivery import delivery_claims, select_items
from veilgate_server.core.tokens import CitizenId, read_request_token
from veilgate_server.crypto import GatewaySigner, seal
from veilgate_server.storage import CitizenKeys, Store

__all__ = ["Clock", "Gateway", "SealedDelivery"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SealedDelivery:
    sealed: bytes
    key_id: str
    item_count: int


@dataclass(slots=True)
class Gateway:
    """Everything one gateway process serves with. Stateless apart from the store, so several
    replicas can share one PostgreSQL database."""

    gateway_id: str
    catalog: Catalog
    store: Store
    signer: GatewaySigner
    clock: Clock = field(default=time.time)

    def get_my_data(self, request_token: str) -> SealedDelivery:
        """Verify the citizen's request, collect their records, sign, seal, and spend the token.

        The token's ``jti`` is recorded only after every check has passed and the reply is ready,
        so a refused request leaves nothing behind; the ledger's unique key makes a concurrent
        replay of the same token fail even if both got this far.
        """
        now = self.clock()
        enrolled: dict[CitizenId, CitizenKeys] = {}

        def public_key_of(citizen_id: CitizenId) -> bytes:
            # Keep the whole enrollment so the reply is sealed to the key enrolled with the signing
            # key that verified, even if the citizen rotates keys meanwhile.
            enrolled[citizen_id] = self.store.citizens.keys_of(citizen_id)
            return enrolled[citizen_id].signing_key

        claims = read_request_token(
            request_token,
            public_key_of=public_key_of,
            gateway_id=self.gateway_id,
            operation=GET_MY_DATA,
            optional_claims=("items", "departments"),
            now=int(now),
        )
        selected = select_items(
            self.catalog, items=claims.string_list("items"), departments=claims.string_list("departments")
        )
        keys = enrolled[claims.citizen_id]
        records = self.store.records.for_citizen(claims.citizen_id, [item.id for item in selected])
        payload = delivery_claims(
            gateway_id=self.gateway_id,
            citizen_id=claims.citizen_id,
            selected=selected,
            records=records,
            request_token=request_token,
            delivery_id=secrets.token_urlsafe(16),
            watermark=f"wm_{secrets.token_hex(12)}",
            issued_at=int(now),
        )
        signed = self.signer.sign(payload, typ=DELIVERY_TYP)
        sealed = seal(signed.encode("ascii"), recipient_public_key=keys.encryption_key)
        self.store.requests.consume(
            claims.citizen_id,
            claims.jti,
            expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
            now=datetime.fromtimestamp(now, UTC),
        )
        return SealedDelivery(sealed=sealed, key_id=self.signer.key_id, item_count=len(payload["items"]))

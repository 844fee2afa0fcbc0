"""Veilgate SDK.

Citizens: :class:`CitizenWallet` holds the keys, :class:`CitizenClient` fetches sealed, signed
records. Anyone: :func:`verify_delivery` checks a delivery a citizen shows them, offline, with the
gateway's published key. Every failure is a :class:`veilgate.errors.VeilgateError`.
"""

from veilgate.citizen import CitizenClient, GatewayInfo
from veilgate.delivery import (
    DataDelivery,
    DataItem,
    GatewayKey,
    gateway_keys_from_jwks,
    verify_delivery,
)
from veilgate.errors import VeilgateError
from veilgate.wallet import CitizenWallet

__all__ = [
    "CitizenClient",
    "CitizenWallet",
    "DataDelivery",
    "DataItem",
    "GatewayInfo",
    "GatewayKey",
    "VeilgateError",
    "gateway_keys_from_jwks",
    "verify_delivery",
]

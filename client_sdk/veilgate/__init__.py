"""Veilgate SDK.

Citizens: :class:`CitizenWallet` holds the keys, :class:`CitizenClient` fetches sealed, signed
records and grants, lists and revokes consents. Banks and insurers: :class:`InstitutionClient`
evaluates policies under a consent over mutual TLS and returns verified :class:`EligibilityResult`.
Departments: :class:`DepartmentClient` pushes :class:`Record` values over mutual TLS.
Anyone: :func:`verify_delivery` and :func:`verify_result` check signed documents offline with the
gateway's published key, and :func:`verify_export` an exported audit log with its pinned log key.
Every failure is a :class:`veilgate.errors.VeilgateError`.
"""

from veilgate.audit import AuditEntry, Checkpoint, ExportCheck, LogVerifier, verify_export
from veilgate.audit_client import AuditClient
from veilgate.citizen import CitizenClient, ConsentInfo, EvaluationRecord, GatewayInfo
from veilgate.consent import PURPOSES, PolicyInfo, PolicyPin
from veilgate.delivery import (
    DataDelivery,
    DataItem,
    GatewayKey,
    gateway_keys_from_jwks,
    verify_delivery,
)
from veilgate.department import DepartmentClient, PushReceipt, Record
from veilgate.errors import VeilgateError
from veilgate.institution import InstitutionClient
from veilgate.result import EligibilityResult, verify_result
from veilgate.wallet import CitizenWallet

__all__ = [
    "PURPOSES",
    "AuditClient",
    "AuditEntry",
    "Checkpoint",
    "CitizenClient",
    "CitizenWallet",
    "ConsentInfo",
    "DataDelivery",
    "DataItem",
    "DepartmentClient",
    "EligibilityResult",
    "EvaluationRecord",
    "ExportCheck",
    "GatewayInfo",
    "GatewayKey",
    "InstitutionClient",
    "LogVerifier",
    "PolicyInfo",
    "PolicyPin",
    "PushReceipt",
    "Record",
    "VeilgateError",
    "gateway_keys_from_jwks",
    "verify_delivery",
    "verify_export",
    "verify_result",
]

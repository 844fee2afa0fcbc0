"""The one table from Veilgate error reasons to gRPC status codes, and the Status it produces.

Each reason in ``veilgate.v1.ErrorReason`` that the gateway can raise has exactly one status code here
(a test keeps the table, the proto enum and the exception classes in step). The status carries a
``google.rpc.ErrorInfo`` with ``domain="veilgate"`` so any gRPC client, in any language, can switch on
the reason without parsing messages.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from veilgate.errors import ERROR_DOMAIN, VeilgateError

__all__ = ["STATUS_OF_REASON", "status_name", "to_grpc_status"]

_C = grpc.StatusCode
STATUS_OF_REASON: Mapping[str, grpc.StatusCode] = {
    "INTERNAL": _C.INTERNAL,
    "UNAVAILABLE": _C.UNAVAILABLE,
    "STORAGE_UNAVAILABLE": _C.UNAVAILABLE,
    "CONFIGURATION_INVALID": _C.FAILED_PRECONDITION,
    "CATALOG_INVALID": _C.FAILED_PRECONDITION,
    "TOKEN_INVALID": _C.UNAUTHENTICATED,
    "TOKEN_EXPIRED": _C.UNAUTHENTICATED,
    "TOKEN_NOT_YET_VALID": _C.UNAUTHENTICATED,
    "TOKEN_LIFETIME_TOO_LONG": _C.UNAUTHENTICATED,
    "TOKEN_WRONG_AUDIENCE": _C.UNAUTHENTICATED,
    "TOKEN_REPLAYED": _C.ALREADY_EXISTS,
    "CITIZEN_NOT_ENROLLED": _C.UNAUTHENTICATED,
    "CITIZEN_ALREADY_ENROLLED": _C.ALREADY_EXISTS,
    "REQUEST_INVALID": _C.INVALID_ARGUMENT,
    "REQUEST_TOO_LARGE": _C.INVALID_ARGUMENT,
    "REQUEST_MALFORMED": _C.INVALID_ARGUMENT,
    "METHOD_UNKNOWN": _C.UNIMPLEMENTED,
    "ITEM_NOT_OWNED": _C.PERMISSION_DENIED,
    "ITEM_UNKNOWN": _C.INVALID_ARGUMENT,
    "DEPARTMENT_UNKNOWN": _C.INVALID_ARGUMENT,
    "RECORD_VALUE_INVALID": _C.INVALID_ARGUMENT,
    "PEER_IDENTITY_INVALID": _C.UNAUTHENTICATED,
    "INSTITUTION_UNKNOWN": _C.PERMISSION_DENIED,
    "INSTITUTION_ALREADY_REGISTERED": _C.ALREADY_EXISTS,
    "INSTITUTION_DISABLED": _C.PERMISSION_DENIED,
    "DEPARTMENT_NOT_REGISTERED": _C.PERMISSION_DENIED,
    "DEPARTMENT_ALREADY_REGISTERED": _C.ALREADY_EXISTS,
    "DEPARTMENT_DISABLED": _C.PERMISSION_DENIED,
    "CERTIFICATE_NOT_ACCEPTED": _C.PERMISSION_DENIED,
    "CERTIFICATE_UNKNOWN": _C.NOT_FOUND,
    "CONSENT_INVALID": _C.PERMISSION_DENIED,
    "CONSENT_UNKNOWN": _C.NOT_FOUND,
    "CONSENT_ALREADY_REGISTERED": _C.ALREADY_EXISTS,
    "CONSENT_REVOKED": _C.PERMISSION_DENIED,
    "CONSENT_WRONG_INSTITUTION": _C.PERMISSION_DENIED,
    "CONSENT_PURPOSE_NOT_ALLOWED": _C.PERMISSION_DENIED,
    "CONSENT_POLICY_NOT_COVERED": _C.PERMISSION_DENIED,
    "CONSENT_POLICY_CHANGED": _C.FAILED_PRECONDITION,
    "CONSENT_NOT_YET_VALID": _C.FAILED_PRECONDITION,
    "CONSENT_EXPIRED": _C.PERMISSION_DENIED,
    "CONSENT_EXHAUSTED": _C.RESOURCE_EXHAUSTED,
    "CITIZEN_BUDGET_EXHAUSTED": _C.RESOURCE_EXHAUSTED,
    "POLICY_INVALID": _C.FAILED_PRECONDITION,
    "POLICY_UNKNOWN": _C.NOT_FOUND,
    "CLIENT_CERTIFICATE_REQUIRED": _C.UNAUTHENTICATED,
    "REQUEST_ID_REUSED": _C.FAILED_PRECONDITION,
    "POLICY_PARAMETER_INVALID": _C.INVALID_ARGUMENT,
}


def status_name(reason: str) -> str:
    """The name of the gRPC status a reason is sent with (INTERNAL for a reason not on the list)."""
    return STATUS_OF_REASON.get(reason, _C.INTERNAL).name


MAX_MESSAGE_CHARS = 256
"""A status message's length at most. Messages may quote what the caller sent (an unknown policy id,
a parameter's name), and the message travels twice, in ``grpc-message`` and in the status detail:
unbounded, a long quote took the trailers past a client's 8 KiB metadata limit, and the caller got
RESOURCE_EXHAUSTED with no reason instead of the refusal."""


def to_grpc_status(error: VeilgateError) -> grpc.Status:
    code = STATUS_OF_REASON.get(error.reason, _C.INTERNAL)
    reason = error.reason if error.reason in STATUS_OF_REASON else "INTERNAL"
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "\u2026"
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    result: grpc.Status = rpc_status.to_status(status)
    return result

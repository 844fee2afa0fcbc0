"""Turn a failed gRPC call into the Veilgate exception its ``ErrorInfo.reason`` names."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from veilgate.errors import (
    ERROR_DOMAIN,
    GatewayUnavailable,
    InternalError,
    RequestTooLarge,
    VeilgateError,
    error_for_reason,
)

__all__ = ["error_from_rpc"]


def error_from_rpc(error: grpc.RpcError) -> VeilgateError:
    """The typed exception for a failed call. Statuses without a Veilgate ErrorInfo (transport
    failures, deadline, message-size limits enforced by gRPC itself) map by status code."""
    if isinstance(error, grpc.Call):
        status = rpc_status.from_call(error)
        if status is not None:
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                    return error_for_reason(info.reason, status.message)
        code, details = error.code(), error.details() or ""
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return GatewayUnavailable(f"gateway unavailable ({code.name}): {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RequestTooLarge(f"the call exceeded a size limit: {details}")
    return InternalError(f"gateway call failed ({code.name}): {details}")

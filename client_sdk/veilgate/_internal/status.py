"""Turn a failed gRPC call into the Veilgate exception its ``ErrorInfo.reason`` names."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from veilgate.errors import (
    ERROR_DOMAIN,
    ConfigurationError,
    GatewayUnavailable,
    InternalError,
    RequestTooLarge,
    StorageError,
    VeilgateError,
    error_for_reason,
)

__all__ = ["call", "call_retrying", "error_from_rpc"]

_Reply = TypeVar("_Reply")
_BUSY = "Concurrent RPC limit exceeded"  # grpcio's server, past its maximum_concurrent_rpcs
# How gRPC's C core words a handshake this client could not complete: a gateway certificate that the
# given root certificates do not verify, or a client certificate and key that do not belong together.
# (A client certificate the gateway refuses reaches the client only as a closed socket, as an outage.)
_TLS_FAILURES = ("Tls handshake failed", "Ssl handshake failed", "Failed to create security handshaker")


def call(method: Callable[..., _Reply], request: object, *, timeout: float) -> _Reply:
    """Invoke a unary stub method; every failure is a :class:`VeilgateError`, a closed client's too."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        raise error_from_rpc(e) from None
    except ValueError as e:
        if "closed channel" not in str(e):
            raise
        raise ConfigurationError("this client is closed: make a new one") from None


def call_retrying(method: Callable[..., _Reply], request: object, *, timeout: float, attempts: int) -> _Reply:
    """:func:`call`, made again with backoff (up to ``attempts`` calls) while the gateway is not
    reached, times out or has its store down: failures that refused nothing. For calls that are
    safe to repeat (an evaluation under one request id, a push of records)."""
    for attempt in range(attempts - 1):
        try:
            return call(method, request, timeout=timeout)
        except (GatewayUnavailable, StorageError):
            time.sleep(_backoff(attempt))
    return call(method, request, timeout=timeout)


def _backoff(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: 0.1, 0.2, 0.4 ... up to 2, each drawn down by up to
    half, so that clients that failed together do not all come back at once."""
    return min(0.1 * (1 << attempt), 2.0) * (1 - secrets.randbelow(500) / 1000)


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
    if code is grpc.StatusCode.UNAVAILABLE and any(failure in details for failure in _TLS_FAILURES):
        # Not an outage: trying again fails the same way until the client's TLS material is fixed.
        return ConfigurationError(
            "the TLS handshake with the gateway failed: check that root_certificates is the CA that issued "
            "the gateway's certificate and, on the institutions' port, that the client certificate and key "
            "belong together "
            f"(gRPC: {details.rpartition('last error: ')[2]})"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return GatewayUnavailable(f"gateway unavailable ({code.name}): {details}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        if _BUSY in details:  # the server's own refusal when it holds its limit of calls
            return GatewayUnavailable("the gateway is at its limit of calls in flight; try again shortly")
        return RequestTooLarge(f"the call exceeded a size limit: {details}")
    return InternalError(f"gateway call failed ({code.name}): {details}")

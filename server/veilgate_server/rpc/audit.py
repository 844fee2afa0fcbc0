"""Every call leaves an entry in the audit log before its reply leaves — enforced here, in an
interceptor, so that no handler can skip it.

The interceptor opens a :class:`CallRecord` for the call, lets the handler (and the gateway
operations) fill it in, and commits it as one log entry whatever the outcome: OK, a Veilgate error
with its reason, or INTERNAL. A handler that needs its receipt (the log index in its reply) commits
the record itself through :meth:`Auditor.commit`; the interceptor then does not append again. If
the entry cannot be made durable the call fails UNAVAILABLE instead (fail closed).

A request that holds record values (a department's push) is hashed with a fresh random salt,
SHA-256(salt || request bytes), and the salt goes back to the caller alone: the public entry then
cannot be used to test a guessed value, while the department can still show that it is its push.

Calls that never reach a handler are logged as well: an unknown method (METHOD_UNKNOWN), a request
over the gateway's size limit (REQUEST_TOO_LARGE; gRPC receives more than the limit so that the
refusal happens here, where it is logged) and request bytes that do not parse as the method's
message (REQUEST_MALFORMED).

AuditService reads, health checks and reflection are not logged: they are public, hold no personal
data, and logging reads of the log would make the log grow by being read. Their unary requests are
held to the same size limit, refused with REQUEST_TOO_LARGE.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from collections.abc import Callable, Collection, Mapping
from typing import Any

import grpc

from veilgate.audit import sha256_b64
from veilgate.errors import InternalError, MethodUnknown, RequestMalformed, RequestTooLarge, VeilgateError
from veilgate_server.audit import Auditor, CallRecord
from veilgate_server.rpc.errors import status_name

__all__ = ["UNLOGGED_PREFIXES", "AuditTrail", "current_call"]

UNLOGGED_PREFIXES = ("/veilgate.v1.AuditService/", "/grpc.health.v1.Health/", "/grpc.reflection.")
_CALL: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("veilgate_call", default=None)


def current_call() -> CallRecord:
    """The audit record of the current call (opened by :class:`AuditTrail`)."""
    record = _CALL.get()
    if record is None:
        raise InternalError("handler ran outside the audit trail")
    return record


class AuditTrail(grpc.ServerInterceptor):
    """Logs every call (see the module docstring); refuses, and logs, a request of more than
    ``max_request_bytes`` (or, for a method in ``request_limits``, its own limit) before parsing
    it. Requests to ``salted_methods`` are hashed with a salt (see the module docstring)."""

    def __init__(
        self,
        auditor: Auditor,
        *,
        max_request_bytes: int,
        request_limits: Mapping[str, int] | None = None,
        salted_methods: Collection[str] = (),
    ) -> None:
        limits = dict(request_limits or {})
        if min([max_request_bytes, *limits.values()]) < 1:
            raise ValueError("request size limits must be at least 1")
        self._auditor = auditor
        self._limit = max_request_bytes
        self._limits = limits
        self._salted = frozenset(salted_methods)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = shown_method(handler_call_details.method)
        limit = self._limits.get(method, self._limit)
        salted = method in self._salted
        if method.startswith(UNLOGGED_PREFIXES):
            return _size_limited(handler, limit)
        if handler is not None and handler.unary_unary is None:  # every Veilgate RPC is unary
            raise InternalError(f"{method} is not unary and cannot be audited")
        # Calls that never reach a servicer are logged too: an unknown method (no handler), a
        # request over the limit (never parsed) and one whose bytes do not parse. Each gets a
        # specific reason instead of gRPC's bare UNIMPLEMENTED, RESOURCE_EXHAUSTED or INTERNAL
        # "Exception deserializing request".
        inner = handler.unary_unary if handler is not None else None
        deserialize = handler.request_deserializer if handler is not None else None
        auditor = self._auditor

        def tolerant_deserialize(data: bytes) -> Any:
            if deserialize is None or len(data) > limit:
                return _Unparsed(data)
            try:
                return deserialize(data)
            except Exception:  # DecodeError and friends: judged in `audited`, where it is logged
                return _Unparsed(data)

        def audited(request: Any, context: grpc.ServicerContext) -> Any:
            unparsed = request if isinstance(request, _Unparsed) else None
            raw = unparsed.data if unparsed is not None else request.SerializeToString(deterministic=True)
            salt = secrets.token_bytes(32) if salted else None
            record = CallRecord(
                method=method,
                request_hash=sha256_b64(raw if salt is None else salt + raw),
                auditor=auditor,
                request_salt=salt,
            )
            token = _CALL.set(record)
            try:
                if inner is None:
                    raise MethodUnknown(f"this gateway has no method {method}")
                if unparsed is not None and len(raw) > limit:
                    raise _too_large(len(raw), limit)
                if unparsed is not None:
                    raise RequestMalformed(f"the request is not a valid protobuf message for {method}")
                reply = inner(request, context)
            except VeilgateError as e:
                auditor.commit(
                    record, code=status_name(e.reason), reason=e.reason
                )  # raises StorageError if not durable
                raise
            except Exception:
                auditor.commit(record, code="INTERNAL", reason="INTERNAL")
                raise
            finally:
                _CALL.reset(token)
            if record.log_index is None:
                auditor.commit(record)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            audited,
            request_deserializer=tolerant_deserialize,
            response_serializer=handler.response_serializer if handler is not None else None,
        )


def _too_large(size: int, limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"the request is {size} bytes; this gateway takes at most {limit}")


def _size_limited(
    handler: grpc.RpcMethodHandler[Any, Any] | None, limit: int
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """An unlogged unary handler that refuses a request over ``limit`` bytes before parsing it, and
    one that does not parse, with their reasons (gRPC's own would be RESOURCE_EXHAUSTED and INTERNAL
    "Exception deserializing request!", with a traceback in the server's log). An unknown method
    under these prefixes is METHOD_UNKNOWN, as elsewhere."""
    if handler is None:

        def unknown(request: Any, context: grpc.ServicerContext) -> Any:
            raise MethodUnknown("this gateway has no such method")

        return grpc.unary_unary_rpc_method_handler(unknown)
    if handler.unary_unary is None:
        return handler  # streaming (the health Watch): left to gRPC's own limit
    inner, deserialize = handler.unary_unary, handler.request_deserializer

    def bounded_deserialize(data: bytes) -> Any:
        if len(data) > limit:
            return _Unparsed(data)
        try:
            return deserialize(data) if deserialize is not None else data
        except Exception:  # DecodeError and friends
            return _Unparsed(data)

    def bounded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Unparsed):
            if len(request.data) > limit:
                raise _too_large(len(request.data), limit)
            raise RequestMalformed("the request is not a valid protobuf message for this method")
        return inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        bounded, request_deserializer=bounded_deserialize, response_serializer=handler.response_serializer
    )


_METHOD_PATH = re.compile(r"/[A-Za-z][A-Za-z0-9_.]{0,99}/[A-Za-z][A-Za-z0-9_]{0,99}")


def shown_method(method: str) -> str:
    """The method path as the log line and the audit entry show it. A path that is not a gRPC
    method name is the caller's free text: written as is, it could forge a line of the server's
    log (a newline), colour a terminal, or put whatever it says in the public append-only log for
    good. It is shown by its hash instead, which still lets anyone check a guess."""
    if _METHOD_PATH.fullmatch(method):
        return method
    return "unrecognised:" + sha256_b64(method.encode("utf-8", "surrogatepass"))


class _Unparsed:
    """Request bytes that did not become a message (over the size limit, malformed, or for an
    unknown method)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

"""Server interceptors: behaviour every RPC gets, so that no handler can forget it.

The chain is built in :func:`veilgate_server.rpc.server.build_server`: the handler cache, the
error boundary, the audit trail (so that every call, allowed or denied, is recorded before its reply
leaves) and institution authentication.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import grpc

from veilgate.errors import InternalError, StorageError, VeilgateError
from veilgate_server.rpc.audit import shown_method
from veilgate_server.rpc.errors import STATUS_OF_REASON, to_grpc_status
from veilgate_server.rpc.metrics import Metrics

__all__ = ["ErrorBoundary", "HandlerCache"]

_log = logging.getLogger("veilgate.rpc")

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class HandlerCache(grpc.ServerInterceptor):
    """Builds each registered method's handler once, through the interceptors after it, instead of
    on every call.

    grpc runs the interceptor chain on its single event-serving thread for every call it starts;
    the wrapping of every interceptor here depends on the method alone (per-call state lives in
    the call's context), so the result is reused. Only the gateway's own ``methods`` are kept, so
    callers naming made-up methods cannot grow the cache.
    """

    def __init__(self, methods: Collection[str]) -> None:
        self._methods = frozenset(methods)
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = continuation(handler_call_details)
            if handler is not None and method in self._methods:
                self._handlers[method] = handler
        return handler


class ErrorBoundary(grpc.ServerInterceptor):
    """Turns every outcome of a unary handler into a clean status and one access-log line.

    A VeilgateError becomes its status with ErrorInfo; anything else is logged with its traceback on
    the server and reaches the caller only as INTERNAL "internal error", so no traceback, SQL or
    value ever leaves. The log line holds the method, status, reason and duration — never request
    contents, citizen ids or record values. With ``metrics``, the same outcome is counted there.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = shown_method(handler_call_details.method)  # never the caller's free text
        inner: Behavior = handler.unary_unary
        metrics = self._metrics

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                reply = inner(request, context)
            except VeilgateError as e:
                if isinstance(e, StorageError) and e.cause is not None:  # for the operator, not the caller
                    _log.warning("%s -> %s %s (%.1f ms): %s", method, _code(e), e.reason, _ms(started), e.cause)
                elif isinstance(e, InternalError):  # the gateway's own fault (a records key that does not fit):
                    _log.error("%s -> %s %s (%.1f ms): %s", method, _code(e), e.reason, _ms(started), e.message)
                    e = InternalError("internal error")  # the operator's to read, not the caller's
                else:
                    _log.info("%s -> %s %s (%.1f ms)", method, _code(e), e.reason, _ms(started))
                if metrics is not None:
                    metrics.observe(method, _code(e), e.reason, time.perf_counter() - started)
                context.abort_with_status(to_grpc_status(e))
            except Exception:
                _log.exception("%s -> INTERNAL (unhandled, %.1f ms)", method, _ms(started))
                if metrics is not None:
                    metrics.observe(method, "INTERNAL", "INTERNAL", time.perf_counter() - started)
                context.abort_with_status(to_grpc_status(InternalError("internal error")))
            _log.info("%s -> OK (%.1f ms)", method, _ms(started))
            if metrics is not None:
                metrics.observe(method, "OK", "", time.perf_counter() - started)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code(error: VeilgateError) -> str:
    return STATUS_OF_REASON.get(error.reason, grpc.StatusCode.INTERNAL).name


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000

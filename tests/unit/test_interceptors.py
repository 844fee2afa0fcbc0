"""The handler cache: each registered method's handler is built once; made-up methods are not kept."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc

from veilgate_server.rpc.interceptors import HandlerCache


class _Details(NamedTuple):
    method: str
    invocation_metadata: tuple[Any, ...] = ()


def test_registered_methods_are_built_once_and_others_every_time() -> None:
    built: list[str] = []

    def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        built.append(details.method)
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    cache = HandlerCache({"/veilgate.v1.AuditService/GetCheckpoint"})
    known = _Details("/veilgate.v1.AuditService/GetCheckpoint")
    first = cache.intercept_service(continuation, known)  # type: ignore[arg-type]
    assert cache.intercept_service(continuation, known) is first  # type: ignore[arg-type]
    for n in range(3):
        cache.intercept_service(continuation, _Details(f"/made.up.Service/M{n}"))  # type: ignore[arg-type]
    cache.intercept_service(continuation, _Details("/made.up.Service/M0"))  # type: ignore[arg-type]
    assert built == [
        known.method,
        "/made.up.Service/M0",
        "/made.up.Service/M1",
        "/made.up.Service/M2",
        "/made.up.Service/M0",
    ]

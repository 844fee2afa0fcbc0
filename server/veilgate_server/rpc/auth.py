"""Who is calling: institutions are identified by their verified client certificate, in an
interceptor, so that no EligibilityService handler can run for an unauthenticated caller.

The TLS layer has already verified the certificate chain against the institution CA. Here the
certificate's SPIFFE URI SAN names the institution, which must be registered and enabled. The
handler reads the result with :func:`current_institution`; nothing in a request can name the caller.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, cast

import grpc

from veilgate.errors import ClientCertificateRequired, InternalError, PeerIdentityInvalid
from veilgate_server.core.identity import CallerIdentity, identity_from_uri_sans
from veilgate_server.crypto import certificate_uri_sans
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.audit import current_call
from veilgate_server.storage import Institution

__all__ = ["INSTITUTION_SERVICES", "InstitutionAuthentication", "current_institution"]

INSTITUTION_SERVICES = ("/veilgate.v1.EligibilityService/",)
_CALLER: contextvars.ContextVar[Institution | None] = contextvars.ContextVar("veilgate_institution", default=None)


def current_institution() -> Institution:
    """The authenticated institution of the current call (set by :class:`InstitutionAuthentication`)."""
    institution = _CALLER.get()
    if institution is None:
        raise InternalError("institution handler ran without authentication")
    return institution


def identity_of(context: grpc.ServicerContext, *, trust_domain: str) -> CallerIdentity:
    """The caller named by the verified client certificate of this call."""
    # grpc returns {property: [values]}; the stubs type the values as bytes.
    certificates = cast("list[bytes]", context.auth_context().get("x509_pem_cert") or [])
    if not certificates:
        raise ClientCertificateRequired("institutions call over mutual TLS with their client certificate")
    return identity_from_uri_sans(certificate_uri_sans(certificates[0]), trust_domain=trust_domain)


class InstitutionAuthentication(grpc.ServerInterceptor):
    """Authenticates every call to an institution service before its handler runs."""

    def __init__(self, gateway: Gateway, *, trust_domain: str) -> None:
        self._gateway = gateway
        self._trust_domain = trust_domain

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(INSTITUTION_SERVICES):
            return handler
        inner = handler.unary_unary

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            call = current_call()
            identity = identity_of(context, trust_domain=self._trust_domain)
            call.caller_kind, call.caller_id = identity.kind, identity.id  # logged even if refused below
            if identity.kind != "institution":
                raise PeerIdentityInvalid(
                    "this service is for institutions; the certificate names another kind of caller"
                )
            institution = self._gateway.authenticate_institution(identity.id)
            token = _CALLER.set(institution)
            try:
                return inner(request, context)
            finally:
                _CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

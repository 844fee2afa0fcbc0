"""Who is calling over mutual TLS: institutions and departments are identified by their verified
client certificate, in an interceptor, so that no EligibilityService or IngestService handler can
run for an unauthenticated caller.

The TLS layer has already verified the certificate chain against the client CA. Here the
certificate's SPIFFE URI SAN names the caller, which must be of the kind the service is for
(institutions call EligibilityService, departments IngestService) and registered and enabled by the
operator, and the certificate itself must be one the operator has on record for that caller and has
not revoked. Handlers read the result with :func:`current_institution` or :func:`current_department`;
nothing in a request can name the caller.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, cast

import grpc

from veilgate.errors import ClientCertificateRequired, InternalError, PeerIdentityInvalid
from veilgate_server.core.identity import CallerIdentity, CallerKind, identity_from_uri_sans
from veilgate_server.crypto import PeerCertificate, peer_certificate
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.audit import current_call
from veilgate_server.storage import Department, Institution

__all__ = [
    "DEPARTMENT_SERVICES",
    "INSTITUTION_SERVICES",
    "MutualTlsAuthentication",
    "current_department",
    "current_institution",
]

INSTITUTION_SERVICES = ("/veilgate.v1.EligibilityService/",)
DEPARTMENT_SERVICES = ("/veilgate.v1.IngestService/",)
_INSTITUTION: contextvars.ContextVar[Institution | None] = contextvars.ContextVar("veilgate_institution", default=None)
_DEPARTMENT: contextvars.ContextVar[Department | None] = contextvars.ContextVar("veilgate_department", default=None)


def current_institution() -> Institution:
    """The authenticated institution of the current call (set by :class:`MutualTlsAuthentication`)."""
    institution = _INSTITUTION.get()
    if institution is None:
        raise InternalError("institution handler ran without authentication")
    return institution


def current_department() -> Department:
    """The authenticated department of the current call (set by :class:`MutualTlsAuthentication`)."""
    department = _DEPARTMENT.get()
    if department is None:
        raise InternalError("department handler ran without authentication")
    return department


def identity_of(context: grpc.ServicerContext, *, trust_domain: str) -> tuple[CallerIdentity, PeerCertificate]:
    """The caller named by the verified client certificate of this call, and the certificate."""
    # grpc returns {property: [values]}; the stubs type the values as bytes.
    certificates = cast("list[bytes]", context.auth_context().get("x509_pem_cert") or [])
    if not certificates:
        raise ClientCertificateRequired("this service is called over mutual TLS with a client certificate")
    certificate = peer_certificate(certificates[0])
    return identity_from_uri_sans(certificate.uri_sans, trust_domain=trust_domain), certificate


class MutualTlsAuthentication(grpc.ServerInterceptor):
    """Authenticates every call to an institution or department service before its handler runs."""

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
        if handler is None or handler.unary_unary is None:
            return handler
        kind: CallerKind
        if method.startswith(INSTITUTION_SERVICES):
            kind = "institution"
        elif method.startswith(DEPARTMENT_SERVICES):
            kind = "department"
        else:
            return handler
        inner = handler.unary_unary
        trust_domain = self._trust_domain
        gateway = self._gateway

        def authenticated(request: Any, context: grpc.ServicerContext) -> Any:
            call = current_call()
            identity, certificate = identity_of(context, trust_domain=trust_domain)
            call.caller_kind, call.caller_id = identity.kind, identity.id  # logged even if refused below
            if identity.kind != kind:
                raise PeerIdentityInvalid(f"this service is for {kind}s; the certificate names another kind of caller")
            if kind == "institution":
                institution = _INSTITUTION.set(gateway.authenticate_institution(identity.id, certificate.serial_hex))
                try:
                    return inner(request, context)
                finally:
                    _INSTITUTION.reset(institution)
            department = _DEPARTMENT.set(gateway.authenticate_department(identity.id, certificate.serial_hex))
            try:
                return inner(request, context)
            finally:
                _DEPARTMENT.reset(department)

        return grpc.unary_unary_rpc_method_handler(
            authenticated,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

"""The bank's and insurer's side of the SDK: eligibility results over mutual TLS.

    with InstitutionClient("gateway.example:7444",   # the institutions' mutual-TLS port
                           certificate_chain=cert_pem, private_key=key_pem, root_certificates=ca_pem,
                           institution_id="bank-of-jinan") as gw:
        for policy in gw.list_policies(): ...
        result = gw.evaluate("credit.consumer_loan", consent_token, {"requested_amount_band": "50k_to_200k"})
        result.decision, result.bands, result.reasons   # verified before it is returned

The institution is identified by its client certificate (issued by the gateway operator); nothing
in a request can claim another identity.

Retrying is safe with the same ``request_id``: the gateway answers a request id it has seen with the
result it recorded, and spends nothing. ``evaluate`` retries an unavailable gateway or a missed
deadline itself, with backoff, under one request id; when it gives up, the error it raises carries
that id (``error.request_id``), so that a later ``evaluate(..., request_id=error.request_id)`` gets
the answer of a call that did reach the gateway instead of spending another use of the consent.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from types import TracebackType

import grpc

from veilgate._internal import jose
from veilgate._internal.pem import require_certificate, require_private_key
from veilgate._internal.status import call, call_retrying
from veilgate.consent import CONSENT_TYP, PolicyInfo
from veilgate.delivery import GatewayKey
from veilgate.errors import (
    PolicyParameterInvalid,
    TokenError,
    TokenInvalid,
    VeilgateError,
)
from veilgate.result import EligibilityResult, request_hash, verify_result
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc, eligibility_pb2, eligibility_pb2_grpc

__all__ = ["InstitutionClient", "PolicyInfo"]


def new_request_id() -> str:
    return f"req-{secrets.token_urlsafe(18)}"


class InstitutionClient:
    """A bank's or insurer's mutual-TLS connection to one gateway."""

    def __init__(
        self,
        target: str,
        *,
        certificate_chain: bytes,
        private_key: bytes,
        root_certificates: bytes,
        gateway_keys: Sequence[GatewayKey] | None = None,
        institution_id: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        require_certificate(root_certificates, "root_certificates (the gateway's CA)")
        require_certificate(certificate_chain, "certificate_chain (the institution's certificate)")
        require_private_key(private_key, "private_key (the institution's key)")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
        )
        self._channel = grpc.secure_channel(target, credentials)
        self._stub = eligibility_pb2_grpc.EligibilityServiceStub(self._channel)
        self._timeout = timeout
        self._attempts = max(1, max_attempts)
        self._institution_id = institution_id
        self._keys = tuple(gateway_keys) if gateway_keys is not None else None

    def __enter__(self) -> InstitutionClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a call after it raises :class:`~veilgate.errors.ConfigurationError`."""
        self._channel.close()

    def gateway_keys(self) -> tuple[GatewayKey, ...]:
        """Pinned keys, or (once) the keys the gateway publishes over this authenticated channel."""
        if self._keys is None:
            stub = citizen_pb2_grpc.CitizenServiceStub(self._channel)
            reply = call(stub.GetGatewayInfo, citizen_pb2.GetGatewayInfoRequest(), timeout=self._timeout)
            self._keys = tuple(GatewayKey(k.key_id, k.public_key) for k in reply.signing_keys)
        return self._keys

    def list_policies(self) -> list[PolicyInfo]:
        """The reviewed policies this institution's kind (bank or insurer) may evaluate, with their
        parameters and the sha256 a citizen's consent pins."""
        reply = call(self._stub.ListPolicies, eligibility_pb2.ListPoliciesRequest(), timeout=self._timeout)
        return [PolicyInfo.from_proto(p) for p in reply.policies]

    def evaluate(
        self,
        policy_id: str,
        consent_token: str,
        parameters: Mapping[str, str] | None = None,
        *,
        request_id: str | None = None,
    ) -> EligibilityResult:
        """Evaluate ``policy_id`` under the citizen's consent and return the verified result.

        ``parameters`` are the policy's named choices, each a string from its list (see
        :meth:`list_policies`). An unavailable gateway or a missed deadline is retried with backoff
        (up to ``max_attempts`` calls) under one ``request_id``; every error raised carries it as
        ``error.request_id`` (see the module docstring)."""
        request_id = request_id or new_request_id()
        try:
            return self._evaluate(policy_id, consent_token, parameters, request_id)
        except VeilgateError as e:
            e.request_id = request_id
            raise

    def _evaluate(
        self, policy_id: str, consent_token: str, parameters: Mapping[str, str] | None, request_id: str
    ) -> EligibilityResult:
        params = dict(parameters or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
            raise PolicyParameterInvalid("policy parameters are names and values, each a string")
        if not isinstance(consent_token, str):
            raise TokenInvalid("the consent token is not a Veilgate consent: give its compact JWS text")
        consent_token = consent_token.strip()  # as read from a file or a QR code; a JWS holds no space
        try:
            consent_id = jose.unverified_claims(consent_token, typ=CONSENT_TYP).claims.get("jti")
        except TokenError as e:
            raise TokenInvalid("the consent token is not a Veilgate consent") from e
        request = eligibility_pb2.EvaluateRequest(
            policy_id=policy_id, consent_token=consent_token, request_id=request_id, parameters=params
        )
        reply = call_retrying(self._stub.Evaluate, request, timeout=self._timeout, attempts=self._attempts)
        expected = request_hash(
            consent_id=str(consent_id), policy_id=policy_id, request_id=request_id, parameters=params
        )
        result = verify_result(
            reply.signed_result,
            gateway_keys=self.gateway_keys(),
            institution_id=self._institution_id,
            expected_request=expected,
        )
        return dataclasses.replace(result, log_index=reply.log_index)

"""The bank's and insurer's side of the SDK: eligibility results over mutual TLS.

    with InstitutionClient("gateway.example:7443",
                           certificate_chain=cert_pem, private_key=key_pem, root_certificates=ca_pem) as gw:
        for policy in gw.list_policies(): ...
        result = gw.evaluate("credit.consumer_loan", consent_token, {"requested_amount_band": "50k_200k"})
        result.decision, result.bands, result.reasons   # verified before it is returned

The institution is identified by its client certificate (issued by the gateway operator); nothing
in a request can claim another identity. ``evaluate`` is safe to retry: it sends the same
``request_id`` and the gateway returns the same signed result without spending another use.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc

from veilgate._internal import jose
from veilgate._internal.pem import require_certificate, require_private_key
from veilgate._internal.status import error_from_rpc
from veilgate.consent import CONSENT_TYP
from veilgate.delivery import GatewayKey
from veilgate.errors import ResultInvalid, TokenError, VeilgateError
from veilgate.result import EligibilityResult, request_hash, verify_result
from veilgate.v1 import citizen_pb2, citizen_pb2_grpc, eligibility_pb2, eligibility_pb2_grpc

__all__ = ["InstitutionClient", "PolicyInfo"]


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: str
    version: int
    sha256: str
    purpose: str
    description: str
    parameters: Mapping[str, tuple[str, ...]]
    reason_codes: tuple[str, ...]
    bands: Mapping[str, tuple[str, ...]]


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
        self._channel.close()

    def gateway_keys(self) -> tuple[GatewayKey, ...]:
        """Pinned keys, or (once) the keys the gateway publishes over this authenticated channel."""
        if self._keys is None:
            stub = citizen_pb2_grpc.CitizenServiceStub(self._channel)
            try:
                reply = stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=self._timeout)
            except grpc.RpcError as e:
                raise error_from_rpc(e) from None
            self._keys = tuple(GatewayKey(k.key_id, k.public_key) for k in reply.signing_keys)
        return self._keys

    def list_policies(self) -> list[PolicyInfo]:
        try:
            reply = self._stub.ListPolicies(eligibility_pb2.ListPoliciesRequest(), timeout=self._timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        return [
            PolicyInfo(
                id=p.id,
                version=p.version,
                sha256=p.sha256,
                purpose=p.purpose,
                description=p.description,
                parameters={q.name: tuple(q.values) for q in p.parameters},
                reason_codes=tuple(p.reason_codes),
                bands={name: tuple(b.labels) for name, b in p.bands.items()},
            )
            for p in reply.policies
        ]

    def evaluate(
        self,
        policy_id: str,
        consent_token: str,
        parameters: Mapping[str, str] | None = None,
        *,
        request_id: str | None = None,
    ) -> EligibilityResult:
        """Evaluate ``policy_id`` under the citizen's consent and return the verified result.

        Transport failures are retried with the same ``request_id`` (idempotent on the gateway)."""
        params = dict(parameters or {})
        request_id = request_id or new_request_id()
        try:
            consent_id = jose.unverified_claims(consent_token, typ=CONSENT_TYP).claims.get("jti")
        except TokenError as e:
            raise ResultInvalid("the consent token is not a Veilgate consent") from e
        request = eligibility_pb2.EvaluateRequest(
            policy_id=policy_id, consent_token=consent_token, request_id=request_id, parameters=params
        )
        reply = None
        for attempt in range(self._attempts):
            try:
                reply = self._stub.Evaluate(request, timeout=self._timeout)
                break
            except grpc.RpcError as e:
                error: VeilgateError = error_from_rpc(e)
                retriable = isinstance(e, grpc.Call) and e.code() is grpc.StatusCode.UNAVAILABLE
                if not retriable or attempt + 1 == self._attempts:
                    raise error from None
        assert reply is not None
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

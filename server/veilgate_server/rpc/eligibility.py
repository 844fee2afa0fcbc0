"""EligibilityService: proto in, gateway operation, proto out. The caller comes from the interceptor."""

from __future__ import annotations

import grpc

from veilgate._internal import jose
from veilgate.v1 import eligibility_pb2, eligibility_pb2_grpc
from veilgate_server.audit import Auditor
from veilgate_server.core.policy import Policy
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.audit import current_call
from veilgate_server.rpc.auth import current_institution

__all__ = ["EligibilityServicer", "policy_summary"]


def policy_summary(policy: Policy) -> eligibility_pb2.PolicySummary:
    """What anyone who may see a policy learns of it: never more than its reviewed text says."""
    return eligibility_pb2.PolicySummary(
        id=policy.id,
        version=policy.version,
        sha256=policy.sha256,
        purpose=policy.purpose,
        description=policy.description,
        parameters=[
            eligibility_pb2.PolicyParameter(name=p.name, type=p.type, values=list(p.values))
            for p in policy.parameters.values()
        ],
        reason_codes=list(policy.reason_codes),
        bands={
            name: eligibility_pb2.BandLabels(labels=[band.label for band in bands])
            for name, bands in policy.bands.items()
        },
        inputs=[item.id for item in policy.inputs],
        institution_kinds=list(policy.institution_kinds),
    )


class EligibilityServicer(eligibility_pb2_grpc.EligibilityServiceServicer):
    def __init__(self, gateway: Gateway, auditor: Auditor) -> None:
        self._gateway = gateway
        self._auditor = auditor

    def ListPolicies(
        self, request: eligibility_pb2.ListPoliciesRequest, context: grpc.ServicerContext
    ) -> eligibility_pb2.ListPoliciesResponse:
        policies = self._gateway.policies_for(current_institution())
        return eligibility_pb2.ListPoliciesResponse(policies=[policy_summary(p) for p in policies])

    def Evaluate(
        self, request: eligibility_pb2.EvaluateRequest, context: grpc.ServicerContext
    ) -> eligibility_pb2.EvaluateResponse:
        call = current_call()
        signed = self._gateway.evaluate(
            current_institution(),
            policy_id=request.policy_id,
            consent_token=request.consent_token,
            request_id=request.request_id,
            parameters=dict(request.parameters),
            call=call,
        )
        receipt = self._auditor.commit(call)  # durable before the reply leaves; its index is the receipt
        # The key that signed this result: a retried request gets the result recorded at its first
        # call, signed by whichever key was current then.
        return eligibility_pb2.EvaluateResponse(
            signed_result=signed, gateway_key_id=_signed_by(signed), log_index=receipt
        )


def _signed_by(jws: str) -> str:
    """The ``kid`` of a JWS the gateway signed (its protected header only: about 2 µs)."""
    kid = jose.parse_json_object(jose.b64url_decode(jws.partition(".")[0])).get("kid")
    assert isinstance(kid, str), "the gateway signs every result with its key id"
    return kid

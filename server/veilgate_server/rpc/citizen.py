"""CitizenService: proto in, gateway operation, proto out. Nothing else lives here."""

from __future__ import annotations

import grpc

from veilgate.v1 import citizen_pb2, citizen_pb2_grpc, common_pb2, eligibility_pb2
from veilgate_server.audit import Auditor, Checkpointer
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.audit import current_call
from veilgate_server.rpc.eligibility import policy_summary
from veilgate_server.storage import ConsentRow

__all__ = ["CitizenServicer"]


class CitizenServicer(citizen_pb2_grpc.CitizenServiceServicer):
    def __init__(self, gateway: Gateway, auditor: Auditor, checkpointer: Checkpointer) -> None:
        self._gateway = gateway
        self._auditor = auditor
        self._checkpointer = checkpointer

    def GetGatewayInfo(
        self, request: citizen_pb2.GetGatewayInfoRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.GetGatewayInfoResponse:
        keys = self._gateway.signer.published  # the current key first, then the retired ones
        return citizen_pb2.GetGatewayInfoResponse(
            gateway_id=self._gateway.gateway_id,
            signing_keys=[common_pb2.PublicKey(key_id=k, algorithm="EdDSA", public_key=key) for k, key in keys],
            log_verifier_key=self._checkpointer.verifier_key,
        )

    def ListPolicies(
        self, request: eligibility_pb2.ListPoliciesRequest, context: grpc.ServicerContext
    ) -> eligibility_pb2.ListPoliciesResponse:
        policies = self._gateway.policies.values()  # in the order they loaded, as institutions see them
        return eligibility_pb2.ListPoliciesResponse(policies=[policy_summary(p) for p in policies])

    def RegisterConsent(
        self, request: citizen_pb2.RegisterConsentRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.RegisterConsentResponse:
        row = self._gateway.register_consent(request.request_token, request.consent_token, call=current_call())
        return citizen_pb2.RegisterConsentResponse(consent=_consent(row))

    def ListConsents(
        self, request: citizen_pb2.ListConsentsRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.ListConsentsResponse:
        rows, next_page = self._gateway.list_consents(request.request_token, call=current_call())
        return citizen_pb2.ListConsentsResponse(consents=[_consent(row) for row in rows], next_page=next_page)

    def RevokeConsent(
        self, request: citizen_pb2.RevokeConsentRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.RevokeConsentResponse:
        return citizen_pb2.RevokeConsentResponse(
            consent=_consent(self._gateway.revoke_consent(request.request_token, call=current_call()))
        )

    def ListEvaluations(
        self, request: citizen_pb2.ListEvaluationsRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.ListEvaluationsResponse:
        rows, next_page = self._gateway.list_evaluations(request.request_token, call=current_call())
        return citizen_pb2.ListEvaluationsResponse(
            next_page=next_page,
            evaluations=[
                citizen_pb2.Evaluation(
                    institution_id=row.institution_id,
                    consent_id=row.consent_id,
                    policy_id=row.policy_id,
                    decision=row.decision,
                    evaluated_at=int(row.created_at.timestamp()),
                    request_id=row.request_id,
                )
                for row in rows
            ],
        )

    def GetMyData(
        self, request: citizen_pb2.GetMyDataRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.GetMyDataResponse:
        call = current_call()
        delivery = self._gateway.get_my_data(request.request_token, call=call)
        receipt = self._auditor.commit(call)  # durable before the reply leaves; its index is the receipt
        return citizen_pb2.GetMyDataResponse(
            sealed_delivery=delivery.sealed, gateway_key_id=delivery.key_id, log_index=receipt
        )

    def ListMyAccessHistory(
        self, request: citizen_pb2.ListMyAccessHistoryRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.ListMyAccessHistoryResponse:
        history = self._gateway.access_history(
            request.request_token, checkpointer=self._checkpointer, call=current_call()
        )
        return citizen_pb2.ListMyAccessHistoryResponse(
            checkpoint=history.checkpoint,
            log_key=history.log_key,
            entries=[
                citizen_pb2.AccessHistoryEntry(index=index, entry=entry, inclusion_proof=proof)
                for index, entry, proof in history.entries
            ],
            next_before_index=history.next_before,
        )


def _consent(row: ConsentRow) -> citizen_pb2.Consent:
    return citizen_pb2.Consent(
        consent_id=row.consent_id,
        institution_id=row.institution_id,
        purpose=row.purpose,
        policies=[citizen_pb2.ConsentedPolicy(id=pid, sha256=digest) for pid, digest in row.policies],
        not_before=int(row.not_before.timestamp()),
        expires_at=int(row.expires_at.timestamp()),
        max_uses=row.max_uses,
        uses=row.uses,
        revoked_at=int(row.revoked_at.timestamp()) if row.revoked_at else 0,
        registered_at=int(row.registered_at.timestamp()),
    )

"""CitizenService: proto in, gateway operation, proto out. Nothing else lives here."""

from __future__ import annotations

import grpc

from veilgate.v1 import citizen_pb2, citizen_pb2_grpc, common_pb2
from veilgate_server.gateway import Gateway

__all__ = ["CitizenServicer"]


class CitizenServicer(citizen_pb2_grpc.CitizenServiceServicer):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def GetGatewayInfo(
        self, request: citizen_pb2.GetGatewayInfoRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.GetGatewayInfoResponse:
        signer = self._gateway.signer
        return citizen_pb2.GetGatewayInfoResponse(
            gateway_id=self._gateway.gateway_id,
            signing_keys=[common_pb2.PublicKey(key_id=signer.key_id, algorithm="EdDSA", public_key=signer.public_key)],
        )

    def GetMyData(
        self, request: citizen_pb2.GetMyDataRequest, context: grpc.ServicerContext
    ) -> citizen_pb2.GetMyDataResponse:
        delivery = self._gateway.get_my_data(request.request_token)
        return citizen_pb2.GetMyDataResponse(sealed_delivery=delivery.sealed, gateway_key_id=delivery.key_id)

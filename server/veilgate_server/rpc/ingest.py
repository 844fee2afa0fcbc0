"""IngestService: proto in, gateway operation, proto out. The department comes from the interceptor."""

from __future__ import annotations

import grpc

from veilgate.v1 import ingest_pb2, ingest_pb2_grpc
from veilgate_server.audit import Auditor
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.audit import current_call
from veilgate_server.rpc.auth import current_department

__all__ = ["IngestServicer"]


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, gateway: Gateway, auditor: Auditor) -> None:
        self._gateway = gateway
        self._auditor = auditor

    def PushRecords(
        self, request: ingest_pb2.PushRecordsRequest, context: grpc.ServicerContext
    ) -> ingest_pb2.PushRecordsResponse:
        call = current_call()
        outcome = self._gateway.push_records(current_department(), request.records, call=call)
        receipt = self._auditor.commit(call)  # already durable, with the records; its index is the receipt
        return ingest_pb2.PushRecordsResponse(
            stored=outcome.stored, stale=list(outcome.stale), log_index=receipt, request_salt=call.request_salt or b""
        )

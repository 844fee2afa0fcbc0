"""AuditService: checkpoints, proofs and entries of the log, for anyone. Proto in, store, proto out."""

from __future__ import annotations

import grpc

from veilgate.errors import RequestInvalid
from veilgate.v1 import audit_pb2, audit_pb2_grpc
from veilgate_server.audit import Checkpointer
from veilgate_server.core.merkle import consistency_proof, inclusion_proof
from veilgate_server.storage import Store

__all__ = ["MAX_PAGE", "AuditServicer"]

MAX_PAGE = 256


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, store: Store, checkpointer: Checkpointer) -> None:
        self._store = store
        self._checkpointer = checkpointer

    def _size(self) -> int:
        return self._store.log.tree_size()

    def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        wanted = max(request.min_tree_size, 1)
        if wanted > self._size():
            raise RequestInvalid(f"the log holds {self._size()} entries, fewer than {wanted}")
        checkpoint = self._checkpointer.covering(wanted)
        assert checkpoint is not None
        return audit_pb2.GetCheckpointResponse(checkpoint=checkpoint.note, verifier_key=self._checkpointer.verifier_key)

    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        if not request.index < request.tree_size <= self._size():
            raise RequestInvalid("need index < tree_size <= the log's size")
        hashes = inclusion_proof(request.index, request.tree_size, self._store.log)
        return audit_pb2.GetInclusionProofResponse(hashes=hashes)

    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        if not 0 < request.first <= request.second <= self._size():
            raise RequestInvalid("need 0 < first <= second <= the log's size")
        hashes = consistency_proof(request.first, request.second, self._store.log)
        return audit_pb2.GetConsistencyProofResponse(hashes=hashes)

    def GetEntries(
        self, request: audit_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetEntriesResponse:
        if not 1 <= request.count <= MAX_PAGE:
            raise RequestInvalid(f"count must be 1 to {MAX_PAGE}")
        if request.start >= self._size():
            raise RequestInvalid(f"start must be below the log's size {self._size()}")
        entries = self._store.log.entries(request.start, request.count)
        return audit_pb2.GetEntriesResponse(entries=[audit_pb2.LogEntry(index=e.index, entry=e.entry) for e in entries])

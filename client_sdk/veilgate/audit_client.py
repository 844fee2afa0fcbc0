"""Read and verify a gateway's audit log: checkpoints, entries, inclusion and consistency proofs.

    audit = AuditClient.connect("gateway.example:7443", root_certificates=ca_pem, log_verifier_key=vkey)
    entry, checkpoint = audit.verify_receipt(delivery.log_index, sealed_bytes)

Every answer is checked against a checkpoint whose signature was verified with the pinned log key;
tree sizes and roots are never taken from a reply that also carries a proof.
"""

from __future__ import annotations

from types import TracebackType

import grpc

from veilgate._internal.pem import require_certificate
from veilgate._internal.status import call
from veilgate.audit import AuditEntry, Checkpoint, LogVerifier, parse_entry, sha256_b64
from veilgate.department import PushReceipt
from veilgate.errors import ProofInvalid, RequestInvalid
from veilgate.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["AuditClient"]


class AuditClient:
    """Verifying reader of one gateway's log. Use :meth:`connect`, or pass a channel you own."""

    def __init__(self, channel: grpc.Channel, *, log_verifier_key: str, timeout: float = 10.0) -> None:
        self._channel = channel
        self._owns_channel = False
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self.verifier = LogVerifier(log_verifier_key)
        self._timeout = timeout

    @classmethod
    def connect(
        cls, target: str, *, root_certificates: bytes | None, log_verifier_key: str, timeout: float = 10.0
    ) -> AuditClient:
        if root_certificates is not None:  # None: the system's roots
            require_certificate(root_certificates, "root_certificates (the gateway's CA)")
        LogVerifier(log_verifier_key)  # a malformed key is refused before a channel is opened
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root_certificates))
        client = cls(channel, log_verifier_key=log_verifier_key, timeout=timeout)
        client._owns_channel = True
        return client

    def __enter__(self) -> AuditClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection :meth:`connect` made (a channel passed in stays its owner's)."""
        if self._owns_channel:
            self._channel.close()

    def _call(self, method: object, request: object) -> object:
        return call(method, request, timeout=self._timeout)  # type: ignore[arg-type]

    def checkpoint(self, *, min_tree_size: int = 0) -> Checkpoint:
        """The latest signed checkpoint (at least ``min_tree_size`` entries), signature verified."""
        reply = self._call(self._stub.GetCheckpoint, audit_pb2.GetCheckpointRequest(min_tree_size=min_tree_size))
        assert isinstance(reply, audit_pb2.GetCheckpointResponse)
        checkpoint = self.verifier.checkpoint(reply.checkpoint)
        if checkpoint.tree_size < min_tree_size:
            raise ProofInvalid("the gateway's checkpoint does not cover the requested size")
        return checkpoint

    def entries(self, start: int, count: int) -> list[tuple[int, bytes]]:
        """Entries ``start <= i < start + count`` (at most 256) as ``(index, entry bytes)``: read them
        with :func:`veilgate.audit.parse_entry`, prove them with :meth:`prove_inclusion`."""
        if start < 0 or count < 0:
            raise RequestInvalid("start and count are not negative")
        reply = self._call(self._stub.GetEntries, audit_pb2.GetEntriesRequest(start=start, count=count))
        assert isinstance(reply, audit_pb2.GetEntriesResponse)
        return [(e.index, e.entry) for e in reply.entries]

    def prove_inclusion(self, index: int, entry: bytes, checkpoint: Checkpoint) -> None:
        """Prove that ``entry`` is entry ``index`` of the tree ``checkpoint`` (verified) signs; raise
        :class:`ProofInvalid` otherwise."""
        if not 0 <= index < checkpoint.tree_size:
            raise ProofInvalid(f"entry {index} is not in a log of {checkpoint.tree_size} entries")
        request = audit_pb2.GetInclusionProofRequest(index=index, tree_size=checkpoint.tree_size)
        reply = self._call(self._stub.GetInclusionProof, request)
        assert isinstance(reply, audit_pb2.GetInclusionProofResponse)
        self.verifier.inclusion(entry, index=index, proof=list(reply.hashes), checkpoint=checkpoint)

    def prove_consistency(self, older: Checkpoint, newer: Checkpoint) -> None:
        """The log behind ``newer`` extends the one behind ``older``: nothing was rewritten."""
        if older.tree_size == newer.tree_size:
            if older.root_hash != newer.root_hash:
                raise ProofInvalid("two different roots are signed for one tree size: the log forked")
            return
        request = audit_pb2.GetConsistencyProofRequest(first=older.tree_size, second=newer.tree_size)
        reply = self._call(self._stub.GetConsistencyProof, request)
        assert isinstance(reply, audit_pb2.GetConsistencyProofResponse)
        self.verifier.consistency(older, newer, list(reply.hashes))

    def verify_receipt(self, index: int, payload: bytes | str) -> tuple[AuditEntry, Checkpoint]:
        """Prove that the call which returned ``payload`` (a sealed delivery, or a signed result as
        :attr:`EligibilityResult.signed_result` holds it) is entry ``index`` of the log, under a
        signed checkpoint."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        entry, checkpoint = self._proven_entry(index)
        if entry.result != sha256_b64(payload):
            raise ProofInvalid("the logged entry does not commit to this reply")
        return entry, checkpoint

    def verify_push(self, receipt: PushReceipt) -> tuple[AuditEntry, Checkpoint]:
        """Prove that a department's push (its :class:`~veilgate.department.PushReceipt`) is entry
        ``receipt.log_index`` of the log, under a signed checkpoint: the entry's salted request
        hash is the one the department computed over what it sent."""
        entry, checkpoint = self._proven_entry(receipt.log_index)
        if entry.request != receipt.request_hash or entry.code != "OK":
            raise ProofInvalid("the logged entry does not commit to this push")
        return entry, checkpoint

    def _proven_entry(self, index: int) -> tuple[AuditEntry, Checkpoint]:
        if index < 0:
            raise ProofInvalid(f"a log index is not negative: {index}")
        checkpoint = self.checkpoint(min_tree_size=index + 1)
        fetched = self.entries(index, 1)
        if len(fetched) != 1 or fetched[0][0] != index:
            raise ProofInvalid("the gateway did not return the receipt's entry")
        raw = fetched[0][1]
        self.prove_inclusion(index, raw, checkpoint)
        return parse_entry(raw), checkpoint

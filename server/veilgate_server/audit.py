"""The audit trail: what each call leaves in the Merkle log, and the signed checkpoints over it.

Every RPC gets a :class:`CallRecord` from the audit interceptor before its handler runs. The handler
(through the gateway operations) fills in what it learns — the authenticated caller, the citizen the
call is about, the policy, consent, decision, result hash and watermark — and the record becomes one
log entry (:mod:`veilgate.audit` describes the bytes) when the call ends, allowed or denied. The
append is durable before the reply leaves; if it cannot be made durable, the call fails UNAVAILABLE.

The subject is never written as a citizen id: each entry carries a fresh nonce and
HMAC-SHA256(citizen log key, nonce). Only the gateway and the citizen hold the key, so nobody else
can link entries to each other or to a person, and erasing the key unlinks them for good.

The :class:`Checkpointer` signs C2SP checkpoints: at most every ``interval`` seconds while the log
grows, and on demand. Before signing it recomputes the root from the stored subtree hashes and
proves the new tree consistent with the last signed one, so a corrupted row is never signed over and
two different roots are never signed for one size (the store keeps the latest under
compare-and-swap).
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from veilgate.audit import AuditEntry, entry_bytes, sha256_b64, subject_tag
from veilgate.errors import StorageError
from veilgate.merkle import verify_consistency
from veilgate_server.core.merkle import consistency_proof, root_of
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.storage import Store
from veilgate_server.storage.log import AppendRequest, LogWriter, StoredCheckpoint

__all__ = ["Auditor", "CallRecord", "Checkpointer", "checkpoint_body"]

_log = logging.getLogger("veilgate.audit")


@dataclass
class CallRecord:
    """What one call has revealed about itself so far; becomes one log entry when it ends."""

    method: str
    request_hash: str
    caller_kind: str = "public"
    caller_id: str | None = None
    subject_citizen_id: str | None = None  # never written to the log; only its tag is
    policy_id: str | None = None
    policy_sha256: str | None = None
    consent: str | None = None
    decision: str | None = None
    result_hash: str | None = None
    watermark: str | None = None
    log_index: int | None = field(default=None)

    def about_citizen(self, citizen_id: str, *, as_caller: bool) -> None:
        self.subject_citizen_id = citizen_id
        if as_caller:
            self.caller_kind, self.caller_id = "citizen", None

    def result(self, payload: bytes) -> None:
        self.result_hash = sha256_b64(payload)


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(seconds * 1000) % 1000:03d}Z"


class Auditor:
    """Turns finished calls into durable log entries."""

    def __init__(self, store: Store, writer: LogWriter, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock

    def entry_for(self, record: CallRecord, *, code: str, reason: str) -> AuditEntry:
        nonce = tag = None
        if record.subject_citizen_id is not None:
            key = self._store.log.pseudonym_key(record.subject_citizen_id, create=True)
            assert key is not None
            nonce = secrets.token_bytes(16)
            tag = subject_tag(key, nonce)
        return AuditEntry(
            time=_timestamp(self._clock()),
            method=record.method,
            caller_kind=record.caller_kind,
            caller_id=record.caller_id,
            code=code,
            reason=reason,
            request=record.request_hash,
            subject_nonce=nonce,
            subject_tag=tag,
            policy_id=record.policy_id,
            policy_sha256=record.policy_sha256,
            consent=record.consent,
            decision=record.decision,
            result=record.result_hash,
            watermark=record.watermark,
        )

    def commit(self, record: CallRecord, *, code: str = "OK", reason: str = "") -> int:
        """Append the call's entry and wait until it is durable; returns its index (the receipt).

        Raises StorageError when the entry cannot be made durable: the caller must fail the call."""
        entry = self.entry_for(record, code=code, reason=reason)
        index = self._writer.append(
            AppendRequest(entry=entry_bytes(entry), subject_citizen_id=record.subject_citizen_id)
        )
        record.log_index = index
        return index


def checkpoint_body(origin: str, tree_size: int, root_hash: bytes) -> str:
    """A C2SP tlog-checkpoint body: origin, decimal size, standard base64 root, each on a line."""
    return f"{origin}\n{tree_size}\n{base64.b64encode(root_hash).decode()}\n"


class Checkpointer:
    """Signs checkpoints over the stored log: periodically while it grows, and on demand."""

    def __init__(
        self,
        store: Store,
        signer: NoteSigner,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._signer = signer
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def verifier_key(self) -> str:
        return self._signer.verifier_key_string()

    def sign_latest(self) -> StoredCheckpoint | None:
        """Sign a checkpoint over the whole stored log if it grew since the last one."""
        with self._lock:
            log = self._store.log
            previous = log.latest_checkpoint()
            size = log.tree_size()
            if size == 0 or (previous is not None and previous.tree_size >= size):
                return previous
            root = root_of(size, log)
            if previous is not None:
                # Never sign over a log that does not extend what was signed before.
                verify_consistency(
                    first_size=previous.tree_size,
                    second_size=size,
                    first_root=previous.root_hash,
                    second_root=root,
                    proof=consistency_proof(previous.tree_size, size, log),
                )
            note = self._signer.sign(checkpoint_body(self.origin, size, root))
            return log.store_checkpoint(size, root, note, at=datetime.fromtimestamp(self._clock(), UTC))

    def covering(self, tree_size: int) -> StoredCheckpoint | None:
        """The latest checkpoint if it covers ``tree_size`` entries, else a freshly signed one."""
        latest = self._store.log.latest_checkpoint()
        if latest is not None and latest.tree_size >= tree_size:
            return latest
        return self.sign_latest()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="veilgate-checkpointer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the periodic signer and sign a last checkpoint over everything appended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.sign_latest()
        except StorageError:
            _log.warning("could not sign a final checkpoint at shutdown", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sign_latest()
            except StorageError:
                _log.warning("could not sign a checkpoint this round; will retry", exc_info=True)
            except Exception:
                _log.exception("checkpoint refused: the stored log does not extend the last checkpoint")

"""The audit trail: what each call leaves in the Merkle log, and the signed checkpoints over it.

Every RPC gets a :class:`CallRecord` from the audit interceptor before its handler runs. The handler
(through the gateway operations) fills in what it learns — the authenticated caller, the citizen the
call is about, the policy, consent, decision, result hash and watermark — and the record becomes one
log entry (:mod:`veilgate.audit` describes the bytes) when the call ends, allowed or denied. The
append is durable before the reply leaves; if it cannot be made durable, the call fails UNAVAILABLE.

A call that changes state (spends its request token, or a use of a consent) makes the change in
the same transaction as its entry (:meth:`Auditor.commit` with a ``change``): the entry and the
change commit together or not at all, and a change that is refused (a replayed token, an exhausted
consent) leaves an entry that says so instead.

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

from sqlalchemy import Connection

from veilgate.audit import AuditEntry, entry_bytes, sha256_b64, subject_tag
from veilgate.errors import StorageError, VeilgateError
from veilgate.merkle import verify_consistency
from veilgate_server.core.merkle import consistency_proof, root_of
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.storage import StateChange, Store
from veilgate_server.storage.log import (
    AppendRequest,
    CheckpointConflict,
    CheckpointSuperseded,
    LogWriter,
    StoredCheckpoint,
    StoreHealth,
)

__all__ = ["Auditor", "CallRecord", "Checkpointer", "checkpoint_body", "operator_entry"]

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
    request_salt: bytes | None = None
    """The salt of ``request_hash`` when the request holds record values (a department's push):
    returned to the caller, never logged."""
    auditor: Auditor | None = field(default=None, repr=False, compare=False)
    """Who commits the record: set for calls that arrive over RPC, None for calls made in process."""

    def about_citizen(self, citizen_id: str, *, as_caller: bool) -> None:
        self.subject_citizen_id = citizen_id
        if as_caller:
            self.caller_kind, self.caller_id = "citizen", None

    def result(self, payload: bytes) -> None:
        self.result_hash = sha256_b64(payload)


_second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def _timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC with milliseconds, truncated (never rounded up
    into the next second). The text of the second is made once per second: strftime on every entry
    cost about 6% of an audited call's time holding the GIL."""
    global _second
    whole, millis = divmod(int(seconds * 1000), 1000)
    cached_whole, text = _second
    if cached_whole != whole:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second = (whole, text)  # one tuple, swapped whole: other threads see the old or the new
    return f"{text}{millis:03d}Z"


class Auditor:
    """Turns finished calls into durable log entries.

    ``status_of`` names the gRPC status a refusal reason is sent with (``rpc.errors.status_name``),
    for the entry of a call whose change was refused inside the log's transaction."""

    def __init__(
        self,
        store: Store,
        writer: LogWriter,
        *,
        clock: Callable[[], float] = time.time,
        status_of: Callable[[str], str],
    ) -> None:
        self._store = store
        self._writer = writer
        self._clock = clock
        self._status_of = status_of

    def _subject(self, record: CallRecord) -> tuple[bytes, str] | None:
        """A fresh nonce and the citizen's tag over it; None for a call about no one."""
        if record.subject_citizen_id is None:
            return None
        key = self._store.log.pseudonym_key(record.subject_citizen_id, create=True)
        assert key is not None
        nonce = secrets.token_bytes(16)
        return nonce, subject_tag(key, nonce)

    def entry_for(self, record: CallRecord, *, code: str, reason: str) -> AuditEntry:
        return self._entry(record, code=code, reason=reason, subject=self._subject(record))

    def _entry(self, record: CallRecord, *, code: str, reason: str, subject: tuple[bytes, str] | None) -> AuditEntry:
        nonce, tag = subject if subject is not None else (None, None)
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

    def commit(
        self, record: CallRecord, *, code: str = "OK", reason: str = "", change: StateChange | None = None
    ) -> int:
        """Append the call's entry and wait until it is durable; returns its index (the receipt).

        With ``change``, the change is made in the same transaction, just before the entry is
        written (so it may still fill in the record, as an evaluation's decision). If the change is
        refused, the entry records the refusal instead, and once that entry is durable the refusal
        is raised. A record is committed once: committing it again returns its index.

        Raises StorageError when the entry cannot be made durable (nor, then, the change): the
        caller must fail the call."""
        if record.log_index is not None:
            return record.log_index
        subject = self._subject(record)  # read here: the log's transaction must not wait on other writes
        citizen = record.subject_citizen_id
        if change is None:
            entry = entry_bytes(self._entry(record, code=code, reason=reason, subject=subject))
            record.log_index = self._writer.append(AppendRequest(entry=entry, subject_citizen_id=citizen))
            return record.log_index
        refusal: VeilgateError | None = None

        def resolve(connection: Connection) -> bytes:  # runs on the log writer's thread
            nonlocal refusal
            outcome = (code, reason)
            try:
                change.apply(connection)
            except VeilgateError as e:
                refusal, outcome = e, (self._status_of(e.reason), e.reason)
            return entry_bytes(self._entry(record, code=outcome[0], reason=outcome[1], subject=subject))

        record.log_index = self._writer.append(AppendRequest(resolve=resolve, subject_citizen_id=citizen))
        if refusal is not None:
            raise refusal
        return record.log_index


def operator_entry(store: Store, *, action: str, citizen_id: str, at: float) -> bytes:
    """The log entry of an operator's action on a citizen's data outside any call (``veilgate
    erase``): caller kind ``operator``, the action as its method and its request, and the citizen's
    pseudonymous subject, so that the citizen finds it in their own trail."""
    key = store.log.pseudonym_key(citizen_id, create=True)
    assert key is not None
    nonce = secrets.token_bytes(16)
    return entry_bytes(
        AuditEntry(
            time=_timestamp(at),
            method=action,
            caller_kind="operator",
            caller_id=None,
            code="OK",
            reason="",
            request=sha256_b64(action.encode()),
            subject_nonce=nonce,
            subject_tag=subject_tag(key, nonce),
        )
    )


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
        health: StoreHealth | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._health = health or StoreHealth()
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
            try:
                return log.store_checkpoint(size, root, note, at=datetime.fromtimestamp(self._clock(), UTC))
            except CheckpointSuperseded:
                # Another process signed a larger tree meanwhile; its checkpoint covers this one.
                return log.latest_checkpoint()

    def sign_if_due(self) -> StoredCheckpoint | None:
        """The periodic signer's round: sign the latest unless a checkpoint was stored less than
        nine tenths of an interval ago. Several server processes (or replicas) then sign about one
        checkpoint an interval between them, not one each."""
        latest = self._store.log.latest_checkpoint()
        if latest is not None and self._clock() - latest.created_at.timestamp() < 0.9 * self._interval:
            return latest
        return self.sign_latest()

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
        except StorageError as e:  # the store is down: one line with its cause, as an outage is logged
            cause = f" ({e.cause})" if e.cause else ""
            _log.warning("could not sign a final checkpoint at shutdown: %s%s", e.message, cause)
            _log.debug("the final checkpoint's failure", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sign_if_due()
                if self._health.failing:  # a round that only read must not call a failing store back
                    self._store.check_writable()
            except CheckpointConflict:
                _log.warning("could not sign a checkpoint this round; will retry", exc_info=True)
            except StorageError as e:  # the store is down: retried next round, logged once an outage
                self._health.failed(e)
            except Exception:
                _log.exception("checkpoint refused: the stored log does not extend the last checkpoint")
            else:
                self._health.answered()

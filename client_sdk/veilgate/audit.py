"""The audit log's public contract: entries, checkpoints, and how anyone verifies them.

Every call to the gateway appends one **entry** to a Merkle log (RFC 9162: leaf hash
SHA-256(0x00 ‖ entry), node hash SHA-256(0x01 ‖ left ‖ right)) before its reply leaves. An entry is
canonical JSON (sorted keys, no whitespace, UTF-8; RFC 8785 for the value types used here)::

    {"v": 1, "time": "2026-11-26T04:10:00.123Z", "method": "/veilgate.v1.CitizenService/GetMyData",
     "caller": {"kind": "citizen" | "institution" | "department" | "public" | "operator",
                "id": "<institution id>"},
     "subject": {"nonce": b64url(16 bytes), "tag": b64url(HMAC-SHA256(citizen log key, nonce))},
     "code": "OK" | gRPC status name, "reason": "" | ErrorInfo reason,
     "policy": {"id", "sha256"}, "consent": "<consent id>", "decision": "ELIGIBLE" | ...,
     "request": b64url(SHA-256(request)), "result": b64url(SHA-256(reply payload)),
     "watermark": "wm_..."}

Members after ``reason`` appear only when they apply. An ``operator`` entry records an operator's
action on a citizen's data outside any call; its method names the command (``"veilgate erase"``). An
entry never holds a record value or a raw citizen id: the subject is a fresh tag per entry under a
key only the gateway and the citizen hold, so nobody else can link two entries to each other or to a
person, and erasing the key unlinks them for good while the log stays verifiable.

A **checkpoint** is a C2SP ``tlog-checkpoint`` (origin line, tree size, base64 root hash) inside a
C2SP ``signed-note`` signed by the gateway's log key. A client takes the tree size and root from a
checkpoint whose signature it checked — never from a server's reply next to a proof.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veilgate._internal import jose
from veilgate._internal.note import NoteInvalid, NoteVerifier, open_note
from veilgate.errors import TokenError
from veilgate.merkle import EMPTY_ROOT, ProofInvalid, RootBuilder, leaf_hash, verify_consistency, verify_inclusion

__all__ = [
    "ENTRY_VERSION",
    "AuditEntry",
    "Checkpoint",
    "ExportCheck",
    "LogVerifier",
    "entry_bytes",
    "parse_entry",
    "sha256_b64",
    "subject_tag",
    "verify_export",
]

ENTRY_VERSION = 1
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_REQUIRED = frozenset({"v", "time", "method", "caller", "code", "reason", "request"})
_OPTIONAL = frozenset({"subject", "policy", "consent", "decision", "result", "watermark"})
_CALLER_KINDS = frozenset({"citizen", "institution", "department", "public", "operator"})


def sha256_b64(data: bytes) -> str:
    return jose.b64url_encode(hashlib.sha256(data).digest())


def subject_tag(key: bytes, nonce: bytes) -> str:
    """The per-entry pseudonym: base64url(HMAC-SHA256(citizen log key, nonce))."""
    return jose.b64url_encode(hmac.new(key, nonce, hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A parsed log entry (see the module docstring for the wire form)."""

    time: str
    method: str
    caller_kind: str
    caller_id: str | None
    code: str
    reason: str
    request: str
    subject_nonce: bytes | None = None
    subject_tag: str | None = None
    policy_id: str | None = None
    policy_sha256: str | None = None
    consent: str | None = None
    decision: str | None = None
    result: str | None = None
    watermark: str | None = None

    def is_about(self, key: bytes) -> bool:
        """Whether this entry's subject tag was made with the citizen log key ``key``."""
        if self.subject_nonce is None or self.subject_tag is None:
            return False
        return hmac.compare_digest(subject_tag(key, self.subject_nonce), self.subject_tag)


def entry_bytes(entry: AuditEntry) -> bytes:
    """The canonical bytes of an entry: exactly what is hashed into the log."""
    caller: dict[str, str] = {"kind": entry.caller_kind}
    if entry.caller_id is not None:
        caller["id"] = entry.caller_id
    body: dict[str, Any] = {
        "v": ENTRY_VERSION,
        "time": entry.time,
        "method": entry.method,
        "caller": caller,
        "code": entry.code,
        "reason": entry.reason,
        "request": entry.request,
    }
    if entry.subject_nonce is not None and entry.subject_tag is not None:
        body["subject"] = {"nonce": jose.b64url_encode(entry.subject_nonce), "tag": entry.subject_tag}
    if entry.policy_id is not None:
        body["policy"] = {"id": entry.policy_id, "sha256": entry.policy_sha256 or ""}
    optional = {
        "consent": entry.consent,
        "decision": entry.decision,
        "result": entry.result,
        "watermark": entry.watermark,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return jose.canonical_json(body)


def _text(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ProofInvalid(f"log entry member {name!r} is missing or not a string")
    return value


def parse_entry(data: bytes) -> AuditEntry:
    """Parse entry bytes strictly; they must be in canonical form (re-encoding gives the same bytes)."""
    try:
        obj = jose.parse_json_object(data)
    except TokenError as e:
        raise ProofInvalid("log entry is not a JSON object") from e
    if obj.get("v") != ENTRY_VERSION or not set(obj) >= _REQUIRED or set(obj) - _REQUIRED - _OPTIONAL:
        raise ProofInvalid("log entry does not have the version 1 members")
    caller = obj["caller"]
    if not isinstance(caller, dict) or caller.get("kind") not in _CALLER_KINDS or set(caller) - {"kind", "id"}:
        raise ProofInvalid("log entry caller is malformed")
    if not _TIME.fullmatch(_text(obj, "time")):
        raise ProofInvalid("log entry time is not YYYY-MM-DDTHH:MM:SS.mmmZ")
    subject = obj.get("subject")
    nonce = tag = None
    if subject is not None:
        if not isinstance(subject, dict) or set(subject) != {"nonce", "tag"}:
            raise ProofInvalid("log entry subject is malformed")
        try:
            nonce = jose.b64url_decode(_text(subject, "nonce"))
        except TokenError as e:
            raise ProofInvalid("log entry subject nonce is not base64url") from e
        tag = _text(subject, "tag")
    policy = obj.get("policy")
    if policy is not None and (not isinstance(policy, dict) or set(policy) != {"id", "sha256"}):
        raise ProofInvalid("log entry policy is malformed")
    entry = AuditEntry(
        time=obj["time"],
        method=_text(obj, "method"),
        caller_kind=caller["kind"],
        caller_id=caller.get("id"),
        code=_text(obj, "code"),
        reason=_text(obj, "reason"),
        request=_text(obj, "request"),
        subject_nonce=nonce,
        subject_tag=tag,
        policy_id=_text(policy, "id") if policy else None,
        policy_sha256=_text(policy, "sha256") if policy else None,
        consent=obj.get("consent"),
        decision=obj.get("decision"),
        result=obj.get("result"),
        watermark=obj.get("watermark"),
    )
    if entry_bytes(entry) != data:
        raise ProofInvalid("log entry is not in canonical form")
    return entry


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint: the log ``origin`` committed to ``root_hash`` at ``tree_size``."""

    origin: str
    tree_size: int
    root_hash: bytes
    note: str


def _parse_checkpoint(text: str, note: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "" or not lines[0]:
        raise ProofInvalid("checkpoint body is not origin, size and root lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size_text):
        raise ProofInvalid("checkpoint tree size is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProofInvalid("checkpoint root is not base64") from e
    if len(root) != 32 or base64.b64encode(root).decode() != root_text:
        raise ProofInvalid("checkpoint root is not a canonical base64 SHA-256 hash")
    return Checkpoint(origin=origin, tree_size=int(size_text), root_hash=root, note=note)


class LogVerifier:
    """Verifies a gateway's log from a pinned verifier key (Go ``sumdb/note`` format) and origin."""

    def __init__(self, verifier_key: str, *, origin: str | None = None) -> None:
        try:
            self._verifier = NoteVerifier.from_verifier_key_string(verifier_key)
        except NoteInvalid as e:
            raise ProofInvalid("the log verifier key is malformed") from e
        self.origin = origin or self._verifier.name

    def checkpoint(self, note: str) -> Checkpoint:
        """Check the checkpoint's signature and origin; returns the size and root it commits to."""
        try:
            text = open_note(note, verifiers=[self._verifier])
        except NoteInvalid as e:
            raise ProofInvalid("checkpoint signature does not verify with the pinned log key") from e
        checkpoint = _parse_checkpoint(text, note)
        if checkpoint.origin != self.origin:
            raise ProofInvalid("checkpoint is for another log")
        return checkpoint

    @staticmethod
    def inclusion(entry: bytes, *, index: int, proof: Sequence[bytes], checkpoint: Checkpoint) -> None:
        """The entry at ``index`` is in the tree the (verified) checkpoint commits to."""
        verify_inclusion(
            leaf_hash=leaf_hash(entry),
            index=index,
            tree_size=checkpoint.tree_size,
            proof=proof,
            root=checkpoint.root_hash,
        )

    @staticmethod
    def consistency(older: Checkpoint, newer: Checkpoint, proof: Sequence[bytes]) -> None:
        """The newer checkpoint's tree extends the older one's (the log only grew)."""
        verify_consistency(
            first_size=older.tree_size,
            second_size=newer.tree_size,
            first_root=older.root_hash,
            second_root=newer.root_hash,
            proof=proof,
        )


@dataclass(frozen=True, slots=True)
class ExportCheck:
    """What :func:`verify_export` established: every entry up to ``checkpoint`` is there, well
    formed, and hashes to its signed root; with ``since``, the log had only grown since that
    earlier checkpoint. ``codes`` counts the entries by gRPC status name (``OK``, denials...)."""

    checkpoint: Checkpoint
    codes: Mapping[str, int]
    since: Checkpoint | None = None


def verify_export(
    lines: Iterable[str], checkpoint_note: str, verifier: LogVerifier, *, since_note: str | None = None
) -> ExportCheck:
    """Check an export (``veilgate audit export``: ``entries.jsonl`` as ``lines``, and the signed
    ``checkpoint``) with a pinned log key, in one pass and O(log n) memory, as an auditor does
    without the gateway. ``since_note`` is an earlier checkpoint the auditor kept: the export's
    entries must hash to its root at its size. The first failure raises :class:`ProofInvalid`
    naming the line or entry."""
    checkpoint = verifier.checkpoint(checkpoint_note)
    since = None
    if since_note is not None:
        try:
            since = verifier.checkpoint(since_note)
        except ProofInvalid as e:
            raise ProofInvalid(f"the earlier checkpoint: {e}") from e
    if since is not None and since.tree_size > checkpoint.tree_size:
        raise ProofInvalid(
            f"the earlier checkpoint covers {since.tree_size} entries, the export's only {checkpoint.tree_size}"
        )
    if since is not None and since.tree_size == 0 and since.root_hash != EMPTY_ROOT:
        raise ProofInvalid("the earlier checkpoint's root is not that of an empty log")
    tree = RootBuilder()
    codes: Counter[str] = Counter()
    for number, line in enumerate(lines, start=1):
        index, entry = _export_line(line, number)
        if index != tree.size:
            raise ProofInvalid(f"line {number}: entry {index} where entry {tree.size} was due")
        if index >= checkpoint.tree_size:
            raise ProofInvalid(f"line {number}: entry {index} is beyond the checkpoint's {checkpoint.tree_size}")
        try:
            codes[parse_entry(entry).code] += 1
        except ProofInvalid as e:
            raise ProofInvalid(f"entry {index}: {e}") from e
        tree.add(leaf_hash(entry))
        if since is not None and tree.size == since.tree_size and tree.root() != since.root_hash:
            raise ProofInvalid(
                f"entries before {since.tree_size} do not hash to the earlier checkpoint's root: "
                "the log was rewritten, not only grown"
            )
    if tree.size != checkpoint.tree_size:
        raise ProofInvalid(f"the export holds {tree.size} entries; its checkpoint covers {checkpoint.tree_size}")
    if tree.root() != checkpoint.root_hash:
        raise ProofInvalid("the entries do not hash to the checkpoint's root")
    return ExportCheck(checkpoint=checkpoint, codes=dict(codes), since=since)


def _export_line(line: str, number: int) -> tuple[int, bytes]:
    """``{"index": i, "leaf": base64(entry bytes)}``, strictly."""
    try:
        obj = jose.parse_json_object(line.encode("utf-8"))
    except (TokenError, UnicodeEncodeError) as e:
        raise ProofInvalid(f"line {number}: not a JSON object") from e
    index, leaf = obj.get("index"), obj.get("leaf")
    if set(obj) != {"index", "leaf"} or type(index) is not int or index < 0 or not isinstance(leaf, str):
        raise ProofInvalid(f"line {number}: not an export record (index, leaf)")
    try:
        entry = base64.b64decode(leaf, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProofInvalid(f"line {number}: leaf is not base64") from e
    if base64.b64encode(entry).decode() != leaf:
        raise ProofInvalid(f"line {number}: leaf is not canonical base64")
    return index, entry

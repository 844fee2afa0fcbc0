"""The gateway's tables, as typed SQLAlchemy 2 models.

These classes are the storage layer's own business: the rest of the gateway sees the frozen
dataclasses returned by :mod:`veilgate_server.storage.repositories`. Any change here needs a new
Alembic revision in ``migrations/versions``; the schema is never created from these classes directly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veilgate_server.crypto.records import WRAPPED_DATA_KEY_LENGTH

__all__ = [
    "AuditLogCheckpoint",
    "AuditLogEntry",
    "AuditLogHead",
    "AuditLogSubject",
    "AuditLogSubtree",
    "Base",
    "Citizen",
    "CitizenLogKey",
    "Consent",
    "CurrentRecordsKey",
    "Evaluation",
    "Record",
    "RecordKey",
    "RegisteredDepartment",
    "RegisteredInstitution",
    "UTCDateTime",
    "UsedRequestToken",
]

KEY_LENGTH = 32
"""Length in bytes of an Ed25519 public key and of an X25519 public key."""

# Deterministic constraint names, so that migrations can refer to them on every backend.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware instant, stored in UTC, always read back as an aware UTC datetime.

    PostgreSQL keeps ``timestamptz`` natively. SQLite has no timezone type: the value is stored as
    naive UTC text and the UTC zone is attached again on the way out. A naive datetime is refused on
    the way in, since its meaning would depend on the host's clock settings.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetimes are not stored; pass a timezone-aware datetime")
        utc = value.astimezone(dt.UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Citizen(Base):
    """An enrolled citizen and their current public keys (Ed25519 for requests, X25519 for sealing).

    Rotation overwrites the keys and increments ``key_version``; old keys are not kept, so a token
    signed with a rotated-out key can no longer be verified.
    """

    __tablename__ = "citizens"
    __table_args__ = (
        CheckConstraint(f"length(signing_key) = {KEY_LENGTH}", name="signing_key_length"),
        CheckConstraint(f"length(encryption_key) = {KEY_LENGTH}", name="encryption_key_length"),
        CheckConstraint("key_version >= 1", name="key_version_positive"),
    )

    citizen_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    signing_key: Mapped[bytes] = mapped_column(LargeBinary(KEY_LENGTH))
    encryption_key: Mapped[bytes] = mapped_column(LargeBinary(KEY_LENGTH))
    key_version: Mapped[int] = mapped_column(Integer, default=1)
    enrolled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    keys_updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Record(Base):
    """One data item a department holds about a citizen, as last pushed by that department.

    ``citizen_id`` is deliberately not a foreign key: departments push records before the citizen
    enrols, and enrolment must not be a precondition for ingestion. A record is only ever reached
    by ``(citizen_id, item_id)``, its primary key, and every read is one citizen's records. On
    SQLite the table is clustered on that key (``WITHOUT ROWID``): a citizen's records lie together
    in key order, and a read scans them in place instead of looking each up by rowid from an index
    (revision 0006; a delivery's 188 records: 159 against 114 µs, measured).
    """

    __tablename__ = "records"
    __table_args__ = ({"sqlite_with_rowid": False},)

    citizen_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(96), primary_key=True)
    department: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[dt.date] = mapped_column(Date)
    value_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    """The item's value (canonical JSON) sealed with the citizen's data key and bound to this row's
    citizen, item, department and date (:mod:`veilgate_server.crypto.records`): the database never
    holds a record value in the clear."""


class RecordKey(Base):
    """A citizen's data key, wrapped by the gateway's records key (revision 0008).

    Made with the citizen's first record; deleting it makes every sealed value of theirs unreadable
    (crypto-shredding, :meth:`~veilgate_server.storage.RecordStore.erase`). ``records_key_id`` names
    the records key that wrapped it, so that a gateway holding another one says which.
    Like ``records.citizen_id``, deliberately not a foreign key to ``citizens``.
    """

    __tablename__ = "record_keys"
    __table_args__ = (CheckConstraint(f"length(wrapped_key) = {WRAPPED_DATA_KEY_LENGTH}", name="wrapped_key_length"),)

    citizen_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    records_key_id: Mapped[str] = mapped_column(String(16))  # not indexed: nothing reads by it (revision 0012)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary(WRAPPED_DATA_KEY_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CurrentRecordsKey(Base):
    """The one records key that new data keys are wrapped by (revision 0011): a single row, set by
    the first data key stored and moved by a rotation in the transaction that rewraps every data key.

    A gateway started before a rotation still holds the old key. Reading this row in the transaction
    that stores a new data key (locked against a rotation on PostgreSQL) keeps it from wrapping one
    under a key the rotation is about to destroy; it takes up the new key instead
    (:class:`~veilgate_server.storage.RecordStore`).
    """

    __tablename__ = "records_key_current"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key_id: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class UsedRequestToken(Base):
    """A consumed single-use request token (``jti``), kept until the token would have expired anyway."""

    __tablename__ = "used_request_tokens"
    # The purge of a citizen's expired tokens reads only those (a range of this index), not every
    # token the citizen spent within the tokens' lifetime.
    __table_args__ = (Index("ix_used_request_tokens_citizen_id_expires_at", "citizen_id", "expires_at"),)

    citizen_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


INSTITUTION_KINDS = ("bank", "insurer")
"""The kinds of institution the gateway serves; a kind decides which purposes it may ask for."""


class RegisteredInstitution(Base):
    """A bank or insurer registered by the operator; it authenticates with a client certificate
    that :class:`ClientCertificate` has on record for it."""

    __tablename__ = "institutions"
    __table_args__ = (CheckConstraint("kind IN ('bank', 'insurer')", name="kind_known"),)

    institution_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class RegisteredDepartment(Base):
    """A department (a data source in the catalog) the operator registered; it authenticates with a
    client certificate on record for it and pushes the records of the items the catalog says it owns."""

    __tablename__ = "departments"

    department_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


CALLER_KINDS = ("institution", "department")
"""The callers that authenticate over mutual TLS, each with client certificates on record."""


class ClientCertificate(Base):
    """A client certificate the operator issued to an institution or a department (its serial, in
    lower-case hex). A mutual-TLS call is accepted only with a certificate on record for its caller
    and not revoked: a renewed certificate is added beside the old one, and the old one is revoked
    when the caller has moved (or at once, when its key leaked). The TLS layer has already checked
    the chain and the dates; ``not_after`` (unknown for a certificate recorded before revision 0010)
    is kept to tell the operator when to renew."""

    __tablename__ = "client_certificates"
    __table_args__ = (
        CheckConstraint("caller_kind IN ('institution', 'department')", name="caller_kind_known"),
        Index("ix_client_certificates_caller", "caller_kind", "caller_id"),
    )

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    caller_kind: Mapped[str] = mapped_column(String(16))
    caller_id: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True, default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True, default=None)


class Consent(Base):
    """A consent token a citizen registered, with its use counter.

    The claims are copied out of the token (which is kept verbatim in ``token``) so that the ledger
    can enforce the window, the revocation and ``max_uses`` without parsing JWS. ``uses`` only grows,
    and only in the same transaction that records an evaluation under the consent.
    """

    __tablename__ = "consents"
    __table_args__ = (
        CheckConstraint("max_uses >= 1", name="max_uses_positive"),
        CheckConstraint("uses >= 0 AND uses <= max_uses", name="uses_within_max"),
        # A citizen's list, newest first, page by page (revision 0013).
        Index("ix_consents_citizen_id_registered_at", "citizen_id", "registered_at", "consent_id"),
    )

    consent_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    citizen_id: Mapped[str] = mapped_column(String(64))
    institution_id: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    policies_json: Mapped[str] = mapped_column(Text)
    """Canonical JSON list of ``{"id", "sha256"}`` objects, in the order the consent lists them."""
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    token: Mapped[str] = mapped_column(Text)
    signing_key: Mapped[bytes | None] = mapped_column(LargeBinary(KEY_LENGTH), nullable=True, default=None)
    """The citizen's Ed25519 key that verified ``token`` at registration; NULL for consents
    registered before revision 0005, whose token is verified on every use."""
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True, default=None)


class Evaluation(Base):
    """One policy evaluation made for an institution, keyed by the institution's ``request_id``.

    The key makes a retry idempotent: the stored ``result_jws`` is returned verbatim and no further
    use of the consent is spent. ``(citizen_id, created_at)`` is indexed for the per-citizen daily
    budget and for the citizen's own history. Nothing reads evaluations by consent, so no index
    keeps them by it (revision 0007 dropped one: every evaluation wrote a leaf of it at random).
    """

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_citizen_id_created_at", "citizen_id", "created_at"),)

    institution_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    consent_id: Mapped[str] = mapped_column(String(128))
    citizen_id: Mapped[str] = mapped_column(String(64))
    policy_id: Mapped[str] = mapped_column(String(128))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(16))
    result_jws: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


# --- the audit log --------------------------------------------------------------------------------

HASH_LENGTH = 32
"""Length in bytes of a SHA-256 digest: every leaf, node and root hash of the audit log."""

# The log's indices: BIGINT on PostgreSQL; plain INTEGER on SQLite, where a single-column INTEGER
# primary key aliases the rowid (SQLite integers are 64-bit either way).
_LOG_INDEX = BigInteger().with_variant(Integer(), "sqlite")


class AuditLogHead(Base):
    """The log's one head row: its size, i.e. the index the next entry will get.

    Every append first moves it by the batch's size (``UPDATE ... RETURNING``); on PostgreSQL that
    row lock, held until the commit, makes gateway replicas sharing one database assign dense
    indices one transaction after the other (SQLite's ``BEGIN IMMEDIATE`` already serialises
    writers). The migration inserts the row with ``tree_size = 0``.
    """

    __tablename__ = "log_head"
    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("tree_size >= 0", name="tree_size_not_negative"),
    )

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    tree_size: Mapped[int] = mapped_column(BigInteger)


class AuditLogEntry(Base):
    """One log entry: its 0-based index (dense, no gaps), its canonical bytes and its leaf hash.

    ``entry`` is opaque to the store; ``leaf_hash`` is SHA-256(0x00 || entry) per RFC 9162 and is
    also the tree's level-0 subtree hash (which :class:`AuditLogSubtree` therefore does not repeat).
    """

    __tablename__ = "log_entries"
    __table_args__ = (
        CheckConstraint("idx >= 0", name="idx_not_negative"),
        CheckConstraint(f"length(leaf_hash) = {HASH_LENGTH}", name="leaf_hash_length"),
    )

    idx: Mapped[int] = mapped_column(_LOG_INDEX, primary_key=True, autoincrement=False)
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditLogSubtree(Base):
    """The hash of a complete aligned subtree: leaves ``[idx * 2**level, (idx + 1) * 2**level)``.

    Only levels 1 and up are stored; level 0 is the leaf hash in :class:`AuditLogEntry`. With every
    complete subtree at hand, any root, inclusion or consistency proof takes O(log n) reads.
    """

    __tablename__ = "log_subtrees"
    __table_args__ = (
        CheckConstraint("level >= 1 AND level <= 63", name="level_range"),
        CheckConstraint("idx >= 0", name="idx_not_negative"),
        CheckConstraint(f"length(hash) = {HASH_LENGTH}", name="hash_length"),
    )

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LENGTH))


class AuditLogCheckpoint(Base):
    """A signed checkpoint of the log, kept verbatim; at most one (hence one root) per tree size."""

    __tablename__ = "log_checkpoints"
    __table_args__ = (
        CheckConstraint("tree_size >= 0", name="tree_size_not_negative"),
        CheckConstraint(f"length(root_hash) = {HASH_LENGTH}", name="root_hash_length"),
    )

    tree_size: Mapped[int] = mapped_column(_LOG_INDEX, primary_key=True, autoincrement=False)
    root_hash: Mapped[bytes] = mapped_column(LargeBinary(HASH_LENGTH))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditLogSubject(Base):
    """A private index from a citizen to the log entries about them.

    Never published (the entries carry only a keyed pseudonym), and deleted when the citizen is
    erased; the primary key's leading column serves the citizen's history.
    """

    __tablename__ = "log_subjects"

    citizen_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class CitizenLogKey(Base):
    """The random key from which the citizen's pseudonym in log entries is derived.

    Deleting it unlinks the citizen from their entries, which stay in the log unchanged.
    """

    __tablename__ = "citizen_log_keys"
    __table_args__ = (CheckConstraint(f"length(key) = {KEY_LENGTH}", name="key_length"),)

    citizen_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[bytes] = mapped_column(LargeBinary(KEY_LENGTH))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

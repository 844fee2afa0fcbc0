"""Repositories: the only way the gateway reads or writes its store.

Each repository method is one transaction and returns frozen dataclasses, never ORM objects, so no
caller can lazy-load, mutate or keep a session alive by accident. The repositories hold no business
rules (token verification, consent, policies live elsewhere); they do guarantee the storage-level
invariants the rest of the gateway relies on, on SQLite and PostgreSQL alike:

* a citizen id is enrolled at most once, even under concurrent enrolment (primary key);
* a request token id (``jti``) is consumed at most once per citizen, even under concurrent requests
  (primary key; on SQLite writers are also serialised with ``BEGIN IMMEDIATE``);
* a record is identified by ``(citizen_id, item_id)``; pushing it again replaces it;
* an institution id and a consent id (the consent token's ``jti``) are registered at most once;
* an evaluation is identified by ``(institution_id, request_id)``: it is recorded, and one use of its
  consent spent, at most once, in the same transaction, and never beyond the consent's ``max_uses``
  or the citizen's daily budget, however many gateway replicas race (see
  :meth:`ConsentLedger.spend_use_and_record`).

Database failures surface as :class:`~veilgate.errors.StorageError` whose message names the
operation but never a record value, a key or an SQL parameter; the original exception is chained.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import islice
from operator import attrgetter, itemgetter
from typing import Any, Final, Self

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from veilgate.errors import (
    CertificateUnknown,
    CitizenAlreadyEnrolled,
    CitizenBudgetExhausted,
    CitizenNotEnrolled,
    ConfigurationError,
    ConsentAlreadyRegistered,
    ConsentExhausted,
    ConsentRevoked,
    ConsentUnknown,
    ConsentWrongInstitution,
    DepartmentAlreadyRegistered,
    DepartmentNotRegistered,
    InstitutionAlreadyRegistered,
    InstitutionUnknown,
    StorageError,
    TokenReplayed,
    VeilgateError,
)
from veilgate_server.core.identity import check_caller_id
from veilgate_server.crypto.records import CitizenDataKey, RecordsKey, RecordsKeyError, RecordsKeySource

from ._session import (
    DriverSql,
    StateChange,
    bind_instant,
    close_kept_connections,
    driver_cursor,
    insert_unique,
    read_driver_rows,
    read_rows,
    sqlite_writer_lock,
    storage_errors,
    write_connection,
    write_session,
)
from .db import check_schema, create_engine_for, upgrade_schema
from .log import AuditLog
from .models import (
    CALLER_KINDS,
    INSTITUTION_KINDS,
    KEY_LENGTH,
    Citizen,
    ClientCertificate,
    Consent,
    Evaluation,
    Record,
    RecordKey,
    RegisteredDepartment,
    RegisteredInstitution,
)

__all__ = [
    "CertificateRenewal",
    "CitizenKeys",
    "CitizenRegistry",
    "ClientCertificateRegistry",
    "ConsentLedger",
    "ConsentPosition",
    "ConsentRow",
    "Department",
    "DepartmentRegistry",
    "EvaluationPosition",
    "EvaluationRow",
    "Institution",
    "InstitutionRegistry",
    "IssuedCertificate",
    "RecordStore",
    "RegisteredConsent",
    "RequestLedger",
    "SealedPush",
    "Store",
    "StoredRecord",
]

_log = logging.getLogger("veilgate.storage")


@dataclass(frozen=True, slots=True)
class EvaluationPosition:
    """Where an evaluation stands in a citizen's list (newest first): the next page starts after it."""

    created_at: dt.datetime
    institution_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class ConsentPosition:
    """Where a consent stands in a citizen's list (newest first): the next page starts after it."""

    registered_at: dt.datetime
    consent_id: str


@dataclass(frozen=True, slots=True)
class CitizenKeys:
    """A citizen's current public keys. ``key_version`` starts at 1 and grows by one per rotation."""

    citizen_id: str
    signing_key: bytes
    encryption_key: bytes
    key_version: int
    keys_updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One data item about a citizen; ``value_json`` is canonical JSON, opaque to the store."""

    citizen_id: str
    item_id: str
    department: str
    as_of: dt.date
    value_json: str


@dataclass(frozen=True, slots=True)
class Institution:
    """A registered bank or insurer (its client certificates: :class:`ClientCertificateRegistry`)."""

    institution_id: str
    kind: str
    name: str
    enabled: bool
    registered_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CertificateRenewal:
    """When the enabled callers of one kind next need a certificate (see
    :meth:`ClientCertificateRegistry.renewal_due`)."""

    soonest: dt.datetime | None
    without_certificate: int


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A client certificate on record for an institution or a department; ``serial`` in lower-case hex."""

    serial: str
    caller_kind: str
    caller_id: str
    issued_at: dt.datetime
    not_after: dt.datetime | None  # None: recorded before its expiry was kept (revision 0010)
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class SealedPush:
    """A department's records with their values sealed, ready for :meth:`RecordStore.push_in`:
    ``wrapped`` holds each citizen's data key, wrapped, that the values were sealed under: read from
    the store, or (for the citizens in ``made``, new to it) made, and stored by ``push_in``."""

    records: tuple[StoredRecord, ...]
    sealed: tuple[bytes, ...]
    wrapped: Mapping[str, bytes]
    made: frozenset[str]  # the citizens whose data key was made here, not read
    key_id: str
    made_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Department:
    """A registered department, a data source of the catalog (its client certificates:
    :class:`ClientCertificateRegistry`)."""

    department_id: str
    enabled: bool
    registered_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """A registered consent. ``policies`` holds the ``(policy_id, sha256)`` pairs it pins, in the
    consent's order; ``token`` is the compact JWS exactly as the citizen registered it."""

    consent_id: str
    citizen_id: str
    institution_id: str
    purpose: str
    policies: tuple[tuple[str, str], ...]
    not_before: dt.datetime
    expires_at: dt.datetime
    max_uses: int
    uses: int
    token: str
    registered_at: dt.datetime
    revoked_at: dt.datetime | None
    signing_key: bytes | None = None
    """The citizen's key that verified ``token`` at registration (None: registered before it was kept)."""


@dataclass(frozen=True, slots=True)
class RegisteredConsent:
    """A registered consent and its citizen's currently enrolled signing key (None: not enrolled)."""

    consent: ConsentRow
    enrolled_key: bytes | None


@dataclass(frozen=True, slots=True)
class EvaluationRow:
    """One recorded evaluation; ``result_jws`` is the signed result, returned verbatim on a retry."""

    institution_id: str
    request_id: str
    consent_id: str
    citizen_id: str
    policy_id: str
    policy_sha256: str
    decision: str
    result_jws: str
    request_hash: str
    created_at: dt.datetime


# --- the statements of every call, on the driver's cursor (see _session.DriverSql) -----------------


def _columns(model: Any) -> list[str]:
    """``model``'s column names, in table order."""
    return [column.name for column in model.__table__.c]


def _driver_select(model: Any, where: str) -> DriverSql:
    """All of ``model``'s columns, in table order, on the driver's cursor (see DriverSql)."""
    return DriverSql.select(f"{model.__name__}Row", model.__table__.name, _columns(model), where)


# The reads every call makes, on the driver's cursor: each costs a few µs there against 40-90 µs
# through SQLAlchemy's execution.
_READ_CITIZEN = _driver_select(Citizen, "citizen_id = :citizen_id")
_READ_INSTITUTION = _driver_select(RegisteredInstitution, "institution_id = :institution_id")
_READ_DEPARTMENT = _driver_select(RegisteredDepartment, "department_id = :department_id")


def _read_with_certificate(model: Any, kind: str, id_column: str) -> DriverSql:
    """A caller's row and whether the certificate ``:serial`` is on record for it, unrevoked: one
    statement on every mutual-TLS call."""
    table = model.__table__.name
    accepted = (
        "EXISTS (SELECT 1 FROM client_certificates c WHERE c.serial = :serial"  # noqa: S608
        f" AND c.caller_kind = '{kind}' AND c.caller_id = {table}.{id_column} AND c.revoked_at IS NULL)"
    )
    columns = _columns(model)
    return DriverSql(
        f"{model.__name__}WithCertificate",
        [*columns, "certificate_accepted"],
        f"SELECT {', '.join(columns)}, {accepted} FROM {table} WHERE {id_column} = :caller_id",  # noqa: S608
    )


_READ_INSTITUTION_WITH_CERTIFICATE = _read_with_certificate(RegisteredInstitution, "institution", "institution_id")
_READ_DEPARTMENT_WITH_CERTIFICATE = _read_with_certificate(RegisteredDepartment, "department", "department_id")
_READ_CONSENT = _driver_select(Consent, "consent_id = :consent_id")
_READ_EVALUATION = _driver_select(Evaluation, "institution_id = :institution_id AND request_id = :request_id")
_READ_CONSENT_WITH_ENROLLED_KEY = DriverSql(
    "ConsentWithEnrolledKey",
    [*_columns(Consent), "enrolled_key"],
    f"SELECT {', '.join(f'consents.{name}' for name in _columns(Consent))}, citizens.signing_key"  # noqa: S608
    " FROM consents LEFT JOIN citizens ON citizens.citizen_id = consents.citizen_id"
    " WHERE consents.consent_id = :consent_id",
)

# The writes of every Evaluate and every citizen call, made in the audit log writer's transaction,
# which other calls' entries share: a conflict must not raise there (on PostgreSQL an error aborts
# the whole transaction), hence ON CONFLICT DO NOTHING, with a RETURNING row saying the row went in.
# One statement both checks that the consent is usable and spends the use (and, on PostgreSQL,
# row-locks it to the commit); a refusal is explained afterwards, on the rare path.
_SPEND_USE = DriverSql(
    "SpentUse",
    ["uses"],
    "UPDATE consents SET uses = uses + 1 WHERE consent_id = :consent_id AND institution_id = :institution_id"
    " AND citizen_id = :citizen_id AND revoked_at IS NULL AND uses < max_uses RETURNING uses",
)
# INSERT ... SELECT <the row> WHERE <within the citizen's budget> ON CONFLICT DO NOTHING RETURNING:
# the count stops at ``budget`` rows, so its cost is bounded by the budget, not the history.
_EVALUATION_FIELDS: Final = tuple(f.name for f in fields(EvaluationRow))  # the table's columns, by name
_RECORD_EVALUATION_WITHIN_BUDGET = DriverSql(
    "RecordedEvaluation",
    ["request_id"],
    f"INSERT INTO evaluations ({', '.join(_EVALUATION_FIELDS)}) "  # noqa: S608  (names from the code)
    f"SELECT {', '.join(':' + name for name in _EVALUATION_FIELDS)} "
    "WHERE (SELECT count(*) FROM (SELECT 1 FROM evaluations WHERE citizen_id = :counted_citizen_id"
    " AND created_at > :since LIMIT :budget) AS counted) < :budget "
    "ON CONFLICT (institution_id, request_id) DO NOTHING RETURNING request_id",
)
# A citizen's registration and revocation, in the same transaction (they are not on a hot path, but
# must commit with the call's log entry and its request token, so they share the writer's rules).
_CONSENT_COLUMNS: Final = tuple(_columns(Consent))
_REGISTER_CONSENT = DriverSql(
    "RegisteredConsent",
    ["consent_id"],
    f"INSERT INTO consents ({', '.join(_CONSENT_COLUMNS)}) "  # noqa: S608  (names from the code)
    f"VALUES ({', '.join(':' + name for name in _CONSENT_COLUMNS)}) "
    "ON CONFLICT (consent_id) DO NOTHING RETURNING consent_id",
)
_REVOKE_CONSENT = DriverSql(
    "RevokedConsent",
    _CONSENT_COLUMNS,
    "UPDATE consents SET revoked_at = :at WHERE consent_id = :consent_id AND citizen_id = :citizen_id"  # noqa: S608
    f" AND revoked_at IS NULL RETURNING {', '.join(_CONSENT_COLUMNS)}",
)
_FORGET_TOKEN = DriverSql(
    "ForgottenToken", [], "DELETE FROM used_request_tokens WHERE citizen_id = :citizen_id AND jti = :jti"
)
_CONSUME_TOKEN = DriverSql(
    "ConsumedToken",
    ["jti"],
    "INSERT INTO used_request_tokens (citizen_id, jti, expires_at) VALUES (:citizen_id, :jti, :expires_at)"
    " ON CONFLICT (citizen_id, jti) DO NOTHING RETURNING jti",
)
_PURGE_EXPIRED_TOKENS = DriverSql(
    "Purged",
    [],
    "DELETE FROM used_request_tokens WHERE citizen_id = :citizen_id AND expires_at < :now AND jti <> :jti",
)
_GIVE_BACK_USE = DriverSql("GivenBack", [], "UPDATE consents SET uses = uses - 1 WHERE consent_id = :consent_id")
_LOCK_CITIZEN_BUDGET = DriverSql(  # PostgreSQL only (see _lock_citizen_budget)
    "Locked", ["locked"], "SELECT pg_advisory_xact_lock(CAST(:namespace AS integer), CAST(:key AS integer))"
)
# SQLite hands rows over one step at a time, and the sqlite3 module releases the GIL around every
# step: a full read of 188 records meant 188 hand-offs of the GIL under load. Concatenated into one
# text it is a single step, and splitting it costs less than parsing it as a JSON array (measured:
# 278 against 441 µs for 188 records). One separator, the ASCII unit separator, goes between every
# field and every record, so the text splits in one call (:func:`_split_records`); it cannot occur
# in an item id, a department, an ISO date or the hex of a sealed value, and a stored field that
# holds it breaks that invariant and is refused. The citizen's wrapped data key comes in the same
# step, first.
_FIELD_SEPARATOR = "\x1f"
_SQLITE_JOINED = (
    "SELECT count(*), (SELECT records_key_id || char(31) || hex(wrapped_key) FROM record_keys"
    " WHERE citizen_id = :citizen_id), group_concat(item_id || char(31) || department || char(31) || as_of"
    " || char(31) || hex(value_sealed), char(31)) FROM (SELECT item_id, department, as_of, value_sealed"
    " FROM records WHERE citizen_id = :citizen_id{among})"
)
_SQLITE_RECORDS_OF_CITIZEN_JOINED = DriverSql(
    "JoinedRecords", ["count", "data_key", "joined"], _SQLITE_JOINED.format(among="")
)
_SQLITE_RECORDS_OF_CITIZEN_AMONG_JOINED = DriverSql(
    "JoinedRecords",
    ["count", "data_key", "joined"],
    _SQLITE_JOINED.format(among=" AND item_id IN (SELECT value FROM json_each(:item_ids))"),
)
# PostgreSQL hands the rows over in one round trip anyway; read on the driver's cursor they cost
# less than half of SQLAlchemy's rows made into records (measured: 241-339 against 544-560 µs of
# CPU for 188 records). The wrapped data key comes with every row (61 bytes).
_POSTGRES_RECORDS = (
    "SELECT r.item_id, r.department, r.as_of, r.value_sealed, k.records_key_id, k.wrapped_key"
    " FROM records AS r LEFT JOIN record_keys AS k ON k.citizen_id = r.citizen_id"
    " WHERE r.citizen_id = :citizen_id{among}"
)
_POSTGRES_RECORD_COLUMNS: Final = ["item_id", "department", "as_of", "value_sealed", "records_key_id", "wrapped_key"]
_POSTGRES_RECORDS_OF_CITIZEN = DriverSql(
    "SealedRecord", _POSTGRES_RECORD_COLUMNS, _POSTGRES_RECORDS.format(among=""), backends=("postgresql",)
)
_POSTGRES_RECORDS_AMONG = DriverSql(
    "SealedRecord",
    _POSTGRES_RECORD_COLUMNS,
    _POSTGRES_RECORDS.format(among=" AND r.item_id = ANY(:item_ids)"),
    backends=("postgresql",),
)
# The records key new data keys are wrapped by (revision 0011). Read in the transaction that stores
# one, and on PostgreSQL held there (FOR SHARE), so that a rotation, which moves the row first, waits
# for that transaction and then rewraps what it stored, or the transaction waits and reads the new key.
_CURRENT_RECORDS_KEY: Final = DriverSql.select("CurrentRecordsKey", "records_key_current", ["key_id"], "id = 1")
_CURRENT_RECORDS_KEY_HELD: Final = {
    "sqlite": _CURRENT_RECORDS_KEY,  # one writer at a time: nothing to hold
    "postgresql": DriverSql(
        "CurrentRecordsKey",
        ["key_id"],
        "SELECT key_id FROM records_key_current WHERE id = 1 FOR SHARE",
        backends=("postgresql",),
    ),
}
_CLAIM_RECORDS_KEY: Final = DriverSql(
    "Claimed",
    [],
    "INSERT INTO records_key_current (id, key_id, changed_at) VALUES (1, :key_id, :at) ON CONFLICT (id) DO NOTHING",
)
_MOVE_RECORDS_KEY: Final = DriverSql(
    "Moved",
    [],
    "INSERT INTO records_key_current (id, key_id, changed_at) VALUES (1, :key_id, :at)"
    " ON CONFLICT (id) DO UPDATE SET key_id = excluded.key_id, changed_at = excluded.changed_at",
)


def _split_records(count: int, joined: str | None) -> list[str]:
    """``item_id, department, as_of, hex of value_sealed`` of each of ``count`` records, one after
    another in one flat list, in no particular order (group_concat's order is not defined). One
    separator between every field and every record, so that the text is split in one call; a field
    that held a separator would change the number of pieces, and is refused."""
    if joined is None:  # no record at all
        return []
    fields = joined.split(_FIELD_SEPARATOR)
    if len(fields) != 4 * count:
        raise StorageError("could not read records: a stored record holds a control character")
    return fields


# --- helpers --------------------------------------------------------------------------------------


def _require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _require_length(value: str, name: str, maximum: int) -> None:
    if not value or len(value) > maximum:
        raise ValueError(f"{name} must be 1 to {maximum} characters long")


def check_display_name(value: str, name: str, maximum: int) -> None:
    """Raise ValueError unless ``value`` is 1 to ``maximum`` printable characters: a name shown in
    listings and on terminals, where a control character could rewrite what is shown."""
    if not value or len(value) > maximum or not value.isprintable():
        raise ValueError(f"{name} must be 1 to {maximum} printable characters, without control characters")


def check_citizen_id(citizen_id: str) -> None:
    """Raise ValueError unless ``citizen_id`` is 1 to 64 printable characters without spaces (the
    wallet holds its citizens to the same)."""
    check_display_name(citizen_id, "citizen_id", 64)
    if " " in citizen_id:
        raise ValueError("citizen_id must not hold spaces")


def _require_serial(serial_hex: str, name: str) -> None:
    if _SERIAL_HEX.fullmatch(serial_hex) is None:
        raise ValueError(f"{name} must be 1 to 64 lower-case hex characters")


def _require_key(value: bytes, name: str) -> None:
    if len(value) != KEY_LENGTH:
        raise ValueError(f"{name} must be {KEY_LENGTH} bytes long")


def _keys(row: Citizen | Row[Any]) -> CitizenKeys:
    return CitizenKeys(
        citizen_id=row.citizen_id,
        signing_key=bytes(row.signing_key),
        encryption_key=bytes(row.encryption_key),
        key_version=row.key_version,
        keys_updated_at=_utc(row.keys_updated_at),
    )


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _check_record(record: StoredRecord) -> None:
    _require_length(record.citizen_id, "citizen_id", 64)
    _require_length(record.item_id, "item_id", 96)
    _require_length(record.department, "department", 64)
    # A sealed value's associated data joins these with NUL, and SQLite's reads join them with
    # the unit separator (see _split_records): neither may occur in them.
    for name in ("citizen_id", "item_id", "department"):
        if _CONTROL.search(getattr(record, name)):
            raise ValueError(f"a record's {name} must not hold a control character")


_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_SERIAL_HEX: Final = re.compile(r"[0-9a-f]{1,64}")

BUDGET_WINDOW: Final = dt.timedelta(hours=24)
"""The window over which :meth:`ConsentLedger.spend_use_and_record` counts a citizen's evaluations."""

# Namespace (first key) of the PostgreSQL advisory locks that serialise one citizen's evaluations.
_PG_BUDGET_LOCK_NAMESPACE: Final = 0x76676231  # b"vgb1"


def _require_sha256_hex(value: str, name: str) -> None:
    if _SHA256_HEX.fullmatch(value) is None:
        raise ValueError(f"{name} must be 64 lower-case hex characters")


def _utc(value: dt.datetime | str) -> dt.datetime:
    """An instant as SQLAlchemy or a driver gives it: a datetime, or on SQLite's driver cursor
    (:class:`DriverSql`) the naive UTC text that SQLAlchemy stored."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _institution(row: RegisteredInstitution | Row[Any]) -> Institution:
    return Institution(
        institution_id=row.institution_id,
        kind=row.kind,
        name=row.name,
        enabled=bool(row.enabled),  # 0/1 on the SQLite driver cursor
        registered_at=_utc(row.registered_at),
    )


def _department(row: RegisteredDepartment | Row[Any]) -> Department:
    return Department(
        department_id=row.department_id,
        enabled=bool(row.enabled),
        registered_at=_utc(row.registered_at),
    )


def _certificate(row: ClientCertificate) -> IssuedCertificate:
    return IssuedCertificate(
        serial=row.serial,
        caller_kind=row.caller_kind,
        caller_id=row.caller_id,
        issued_at=_utc(row.issued_at),
        not_after=None if row.not_after is None else _utc(row.not_after),
        revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
    )


def _policies_json(policies: Sequence[tuple[str, str]]) -> str:
    if not policies:
        raise ValueError("a consent must pin at least one policy")
    seen: set[str] = set()
    pins: list[dict[str, str]] = []
    for policy_id, sha256 in policies:
        _require_length(policy_id, "policy id", 128)
        _require_sha256_hex(sha256, "policy sha256")
        if policy_id in seen:
            raise ValueError("a consent may pin each policy id only once")
        seen.add(policy_id)
        pins.append({"id": policy_id, "sha256": sha256})
    return json.dumps(pins, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _consent(row: Consent | Row[Any]) -> ConsentRow:
    return ConsentRow(
        consent_id=row.consent_id,
        citizen_id=row.citizen_id,
        institution_id=row.institution_id,
        purpose=row.purpose,
        policies=tuple((pin["id"], pin["sha256"]) for pin in json.loads(row.policies_json)),
        not_before=_utc(row.not_before),
        expires_at=_utc(row.expires_at),
        max_uses=row.max_uses,
        uses=row.uses,
        token=row.token,
        registered_at=_utc(row.registered_at),
        revoked_at=None if row.revoked_at is None else _utc(row.revoked_at),
        signing_key=None if row.signing_key is None else bytes(row.signing_key),
    )


def _evaluation(row: Evaluation | Row[Any]) -> EvaluationRow:
    return EvaluationRow(
        institution_id=row.institution_id,
        request_id=row.request_id,
        consent_id=row.consent_id,
        citizen_id=row.citizen_id,
        policy_id=row.policy_id,
        policy_sha256=row.policy_sha256,
        decision=row.decision,
        result_jws=row.result_jws,
        request_hash=row.request_hash,
        created_at=_utc(row.created_at),
    )


def _lock_citizen_budget(connection: Connection, citizen_id: str) -> None:
    """Serialise evaluations of one citizen until the transaction ends (PostgreSQL only).

    Under READ COMMITTED, two transactions spending uses of *different* consents of one citizen
    could both count the citizen's evaluations before either inserts, and overshoot the daily
    budget. A transaction-scoped advisory lock on the citizen closes that gap. SQLite needs nothing:
    ``BEGIN IMMEDIATE`` already serialises every writer.
    """
    if connection.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(citizen_id.encode()).digest()
    key = int.from_bytes(digest[:4], "big", signed=True)
    _LOCK_CITIZEN_BUDGET.run(connection, {"namespace": _PG_BUDGET_LOCK_NAMESPACE, "key": key})


# --- repositories ---------------------------------------------------------------------------------


class CitizenRegistry:
    """Enrolled citizens and their current public keys."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def enroll(self, citizen_id: str, *, signing_key: bytes, encryption_key: bytes, at: dt.datetime) -> CitizenKeys:
        """Enrol ``citizen_id`` with key version 1; :class:`CitizenAlreadyEnrolled` if present."""
        check_citizen_id(citizen_id)
        _require_key(signing_key, "signing_key")
        _require_key(encryption_key, "encryption_key")
        _require_aware(at, "at")
        row = Citizen(
            citizen_id=citizen_id,
            signing_key=signing_key,
            encryption_key=encryption_key,
            key_version=1,
            enrolled_at=at,
            keys_updated_at=at,
        )
        return insert_unique(
            self._sessions,
            row,
            _keys,
            action="enroll the citizen",
            exists=CitizenAlreadyEnrolled("citizen is already enrolled"),
        )

    def rotate_keys(
        self, citizen_id: str, *, signing_key: bytes, encryption_key: bytes, at: dt.datetime
    ) -> CitizenKeys:
        """Replace the citizen's keys and bump ``key_version``; the old keys are not kept."""
        _require_key(signing_key, "signing_key")
        _require_key(encryption_key, "encryption_key")
        _require_aware(at, "at")
        # One UPDATE: concurrent rotations each increment the version, none is lost.
        statement = (
            update(Citizen)
            .where(Citizen.citizen_id == citizen_id)
            .values(
                signing_key=signing_key,
                encryption_key=encryption_key,
                key_version=Citizen.key_version + 1,
                keys_updated_at=at,
            )
            .returning(Citizen)
        )
        with storage_errors("rotate the citizen's keys"), write_session(self._sessions) as session:
            row = session.scalars(statement).one_or_none()
            keys = None if row is None else _keys(row)
        if keys is None:
            raise CitizenNotEnrolled("citizen is not enrolled")
        return keys

    def keys_of(self, citizen_id: str) -> CitizenKeys:
        """The citizen's current keys; :class:`CitizenNotEnrolled` if the id is unknown."""
        with storage_errors("read the citizen's keys"):
            rows = read_driver_rows(self._sessions, _READ_CITIZEN, {"citizen_id": citizen_id})
        if not rows:
            raise CitizenNotEnrolled("citizen is not enrolled")
        return _keys(rows[0])

    def count(self) -> int:
        with storage_errors("count citizens"), self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Citizen)) or 0


_INSERT_DATA_KEY: Final = {
    postgres: (
        "INSERT INTO record_keys (citizen_id, records_key_id, wrapped_key, created_at) "
        + ("VALUES (%s, %s, %s, %s)" if postgres else "VALUES (?, ?, ?, ?)")
        + " ON CONFLICT (citizen_id) DO NOTHING"
    )
    for postgres in (False, True)
}
_PUSH_ROWS: Final = 1000
"""Rows one push statement writes at most: 5,000 parameters, within every backend's limit."""


def _push_statement(rows: int, *, postgres: bool) -> str:
    """An upsert of ``rows`` records in one statement that replaces a stored record only with one
    of the same or a later date, and returns the key of every row it wrote."""
    mark = "%s" if postgres else "?"
    row = "(" + ", ".join([mark] * 5) + ")"
    return (
        "INSERT INTO records (citizen_id, item_id, department, as_of, value_sealed) VALUES "  # noqa: S608
        + ", ".join([row] * rows)
        + " ON CONFLICT (citizen_id, item_id) DO UPDATE SET department = excluded.department,"
        " as_of = excluded.as_of, value_sealed = excluded.value_sealed"
        " WHERE records.as_of <= excluded.as_of RETURNING citizen_id, item_id"
    )


class RecordStore:
    """Records pushed by departments, one per ``(citizen_id, item_id)``, their values sealed at rest.

    Each citizen's values are sealed with a data key of their own, made with their first record and
    kept wrapped by the gateway's records key (:mod:`veilgate_server.crypto.records`); the records
    key never reaches the database. A store opened without the records key (the auditor's and
    the operator's tools that never touch records) refuses every call here."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        records_key: RecordsKey | None,
        reload_keys: Callable[[], Iterable[RecordsKey]] | None = None,
    ) -> None:
        """``reload_keys`` gives the records keys on disk again (``keys/records.key`` and a rotation's
        ``records.key.next``), for :meth:`_key_named` to take up a key another process rotated to."""
        self._sessions = sessions
        self._key = records_key
        self._reload_keys = reload_keys
        self._reload_lock = threading.Lock()
        bind = sessions.kw.get("bind")
        self._dialect = bind.dialect.name if isinstance(bind, Engine) else ""

    @property
    def key_id(self) -> str | None:
        """The id of the records key this store seals and opens with; None when it has none."""
        return self._key.key_id if self._key is not None else None

    def _records_key(self) -> RecordsKey:
        if self._key is None:
            raise ConfigurationError("this store was opened without the records key; records cannot be read or written")
        return self._key

    def _key_named(self, key_id: str) -> RecordsKey:
        """The records key ``key_id``: this store's, or, when another process has rotated the records
        key since this store was opened, the new key as it is now on disk (``reload_keys``), which
        this store holds from then on; the old one is let go, as the rotation destroyed it.
        RecordsKeyError (naming both keys, so the operator knows which file) when neither is it."""
        key = self._records_key()
        if key.key_id == key_id:
            return key
        with self._reload_lock:  # one thread reads the files; the others find the key it took up
            key = self._records_key()
            if key.key_id != key_id and self._reload_keys is not None:
                found = next((k for k in self._reload_keys() if k.key_id == key_id), None)
                if found is not None:
                    _log.warning("records key %s taken up in place of %s: it was rotated", key_id, key.key_id)
                    self._key = key = found
        if key.key_id != key_id:
            raise RecordsKeyError(
                f"could not read records: sealed under records key {key_id}, and this gateway holds {key.key_id}"
            )
        return key

    def _open_data_key(self, citizen_id: str, key_id: str, wrapped: bytes) -> CitizenDataKey:
        """A citizen's data key as read from ``record_keys``: refused when there is none (their records
        outlived it) or no records key this gateway can find wrapped it."""
        if not wrapped:
            raise RecordsKeyError("could not read records: a citizen's records have no data key")
        return self._key_named(key_id).unwrap(citizen_id, wrapped)

    def _current_key_in(self, connection: Connection, now: dt.datetime) -> RecordsKey:
        """The records key that a data key stored in ``connection``'s write transaction must be
        wrapped by: the one the database names (this store's key claims it when it names none yet),
        held on PostgreSQL until the transaction ends, so that no rotation moves it meanwhile."""
        held = _CURRENT_RECORDS_KEY_HELD[connection.dialect.name]
        current = held.run(connection, {})
        if not current:
            _CLAIM_RECORDS_KEY.run(
                connection, {"key_id": self._records_key().key_id, "at": bind_instant(connection.dialect, now)}
            )
            current = held.run(connection, {})
        return self._key_named(current[0].key_id)

    def check_records_key(self) -> None:
        """Raise ConfigurationError when the database's records key (the one every data key is
        wrapped by) is neither this store's nor, after a rotation, the one on disk now: every
        gateway serving one database must hold the same ``keys/records.key``, and a gateway that
        made its own would fail every read of theirs."""
        key = self._records_key()
        with storage_errors("read the records key"):
            current = read_driver_rows(self._sessions, _CURRENT_RECORDS_KEY, {})
        if not current:  # no data key stored yet: the first one stored names it
            return
        try:
            self._key_named(current[0].key_id)
        except RecordsKeyError:
            raise ConfigurationError(
                f"the stored records are sealed under records key {current[0].key_id}, and this gateway "
                f"holds records key {key.key_id}: copy keys/records.key from the gateway that stored them"
            ) from None

    def put_many(
        self, records: Iterable[StoredRecord], *, batch_size: int = 5000, now: dt.datetime | None = None
    ) -> int:
        """Insert or replace records; returns how many were accepted. ``now``: when a new citizen's
        data key is made (the current time by default).

        A record whose ``(citizen_id, item_id)`` is already stored replaces the stored department,
        ``as_of`` and value (the last push wins; the store does not compare dates). Within one
        call, a later record for the same key supersedes an earlier one; both are counted.

        Records are written in batches of ``batch_size``, **each batch in its own transaction**:
        if a batch fails, the batches before it stay written and a :class:`StorageError` is raised,
        so a caller that needs all-or-nothing should pass one batch. Retrying a failed call is safe,
        since writing a record again is idempotent.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._records_key()  # without it, refused before anything is written
        made_at = now or dt.datetime.now(dt.UTC)
        written = 0
        iterator = iter(records)
        while batch := list(islice(iterator, batch_size)):
            latest: dict[tuple[str, str], StoredRecord] = {}
            for record in batch:
                _check_record(record)
                latest[(record.citizen_id, record.item_id)] = record
            with storage_errors("store records"), write_session(self._sessions) as session:
                connection = session.connection()
                data_keys = self._data_keys(connection, {citizen for citizen, _ in latest}, made_at)
                rows = [
                    {
                        "citizen_id": r.citizen_id,
                        "item_id": r.item_id,
                        "department": r.department,
                        "as_of": r.as_of,
                        "value_sealed": data_keys[r.citizen_id].seal(
                            r.item_id, r.department, r.as_of.isoformat(), r.value_json
                        ),
                    }
                    for r in latest.values()
                ]
                connection.execute(self._upsert(connection.dialect.name), rows)
            written += len(batch)
        return written

    def seal_push(self, records: Sequence[StoredRecord], *, now: dt.datetime) -> SealedPush:
        """A department's pushed ``records`` sealed for :meth:`push_in`, outside any write: each
        citizen's data key is read (or, for a citizen new to the store, made) and every value sealed
        under it here, so that the write holds the log's transaction only to store them. ``now``:
        when a new citizen's data key is made. ``records`` must hold at most one record per
        ``(citizen_id, item_id)``."""
        key = self._records_key()
        for record in records:
            _check_record(record)
        if len({(r.citizen_id, r.item_id) for r in records}) != len(records):
            raise ValueError("a push holds at most one record per citizen and item")
        table = RecordKey.__table__
        assert isinstance(table, Table)
        citizens = sorted({r.citizen_id for r in records})
        statement = select(table.c.citizen_id, table.c.records_key_id, table.c.wrapped_key).where(
            table.c.citizen_id.in_(citizens)
        )
        with storage_errors("read the data keys"):
            stored = {row.citizen_id: row for row in read_rows(self._sessions, statement)}
        data_keys: dict[str, CitizenDataKey] = {}
        wrapped: dict[str, bytes] = {}
        for citizen in citizens:
            row = stored.get(citizen)
            if row is None:
                data_keys[citizen], wrapped[citizen] = key.new_data_key(citizen)
            else:
                data_keys[citizen] = self._open_data_key(citizen, row.records_key_id, row.wrapped_key)
                wrapped[citizen] = row.wrapped_key
        sealed = tuple(
            data_keys[r.citizen_id].seal(r.item_id, r.department, r.as_of.isoformat(), r.value_json) for r in records
        )
        made = frozenset(citizen for citizen in citizens if citizen not in stored)
        return SealedPush(tuple(records), sealed, wrapped, made, key.key_id, now)

    def push_in(self, connection: Connection, push: SealedPush) -> list[int]:
        """Store a sealed push (:meth:`seal_push`) in ``connection``'s transaction (the one that
        appends the push's log entry); returns the indexes of the records not applied because a
        newer ``as_of`` is stored for their citizen and item. A record with the same or a newer
        ``as_of`` replaces the stored one, so pushing a batch again is harmless, and a delayed
        retry of an older batch cannot undo a newer one.

        The data keys made for citizens new to the store are stored, and every citizen's key read
        back. Where another write changed it meanwhile, that citizen's values are sealed again here:
        under the key another push stored first, or, for a citizen erased since their key was read,
        under a fresh one. A key an erasure destroyed is never stored again, so that nothing it
        sealed (in a page not yet reused, or a backup) can open again. One statement then writes every record and names
        those it wrote (an upsert whose update is conditional on the date, with ``RETURNING``), so
        the date is compared where it is written, whatever another gateway writes meanwhile.

        A data key is stored only under the records key the database names (:meth:`_current_key_in`):
        where a rotation moved it since the push was sealed, the new citizens' keys are made again
        under the new key, never under the one the rotation destroys.

        All or nothing: on any failure, what it wrote is rolled back (to a savepoint) and the
        error is raised, so the transaction can still log the refusal."""
        records, sealed = push.records, list(push.sealed)
        if not records:
            return []
        postgres = connection.dialect.name == "postgresql"
        citizens = sorted(push.wrapped)
        written: set[tuple[str, str]] = set()
        with connection.begin_nested(), driver_cursor(connection) as cursor:
            made_at = bind_instant(connection.dialect, push.made_at)
            current = self._current_key_in(connection, push.made_at) if push.made else None
            if current is not None and current.key_id == push.key_id:
                new_keys = [(c, push.key_id, push.wrapped[c], made_at) for c in sorted(push.made)]
                cursor.executemany(_INSERT_DATA_KEY[postgres], new_keys)
            mark = "%s" if postgres else "?"
            cursor.execute(
                f"SELECT citizen_id, records_key_id, wrapped_key FROM record_keys "  # noqa: S608
                f"WHERE citizen_id IN ({', '.join([mark] * len(citizens))})",
                citizens,
            )
            stored = {citizen: (key_id, bytes(wrapped)) for citizen, key_id, wrapped in cursor.fetchall()}
            for citizen in citizens:
                # None stored: their key was made under a records key rotated away since, or they were
                # erased since seal_push read their key. A new one, never the old.
                if citizen not in stored:
                    current = current or self._current_key_in(connection, push.made_at)
                    data_key, wrapped = current.new_data_key(citizen)
                    cursor.execute(_INSERT_DATA_KEY[postgres], (citizen, current.key_id, wrapped, made_at))
                elif stored[citizen][1] != push.wrapped[citizen]:  # another write stored theirs first
                    data_key = self._open_data_key(citizen, *stored[citizen])
                else:
                    continue
                for i, r in enumerate(records):
                    if r.citizen_id == citizen:
                        sealed[i] = data_key.seal(r.item_id, r.department, r.as_of.isoformat(), r.value_json)
            for start in range(0, len(records), _PUSH_ROWS):
                values: list[Any] = []
                for r, value in zip(
                    records[start : start + _PUSH_ROWS], sealed[start : start + _PUSH_ROWS], strict=True
                ):
                    values += (
                        r.citizen_id,
                        r.item_id,
                        r.department,
                        r.as_of if postgres else r.as_of.isoformat(),
                        value,
                    )
                cursor.execute(_push_statement(len(values) // 5, postgres=postgres), values)
                written.update(map(tuple, cursor.fetchall()))
        return [i for i, r in enumerate(records) if (r.citizen_id, r.item_id) not in written]

    def _data_keys(self, connection: Connection, citizens: set[str], now: dt.datetime) -> dict[str, CitizenDataKey]:
        """The data keys of ``citizens``, made and stored for those who have none yet (under the
        database's current records key)."""
        table = RecordKey.__table__
        assert isinstance(table, Table)
        wanted = sorted(citizens)
        stored = {
            row.citizen_id: row for row in connection.execute(select(table).where(table.c.citizen_id.in_(wanted)))
        }
        missing = [citizen for citizen in wanted if citizen not in stored]
        if missing:  # on PostgreSQL a concurrent first push may win: theirs is read back below
            key = self._current_key_in(connection, now)
            new = [
                {
                    "citizen_id": citizen,
                    "records_key_id": key.key_id,
                    "wrapped_key": key.new_data_key(citizen)[1],
                    "created_at": now,
                }
                for citizen in missing
            ]
            insert = (sqlite.insert if connection.dialect.name == "sqlite" else postgresql.insert)(table)
            connection.execute(insert.on_conflict_do_nothing(index_elements=[table.c.citizen_id]), new)
            stored = {
                row.citizen_id: row for row in connection.execute(select(table).where(table.c.citizen_id.in_(wanted)))
            }
        return {
            citizen: self._open_data_key(citizen, row.records_key_id, row.wrapped_key)
            for citizen, row in stored.items()
        }

    @staticmethod
    def _upsert(dialect: str) -> Any:
        """Insert records, replacing a stored one for the same citizen and item."""
        table = Record.__table__
        assert isinstance(table, Table)
        if dialect not in ("sqlite", "postgresql"):
            raise StorageError(f"record upsert is not implemented for the {dialect} backend")
        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
        return insert.on_conflict_do_update(
            index_elements=[table.c.citizen_id, table.c.item_id],
            set_={
                "department": insert.excluded.department,
                "as_of": insert.excluded.as_of,
                "value_sealed": insert.excluded.value_sealed,
            },
        )

    def for_citizen(self, citizen_id: str, item_ids: Collection[str] | None = None) -> list[StoredRecord]:
        """The citizen's records ordered by ``item_id``: all of them, or those among ``item_ids``.

        Item ids with no stored record are simply absent from the result.
        """
        located, values = self._opened(citizen_id, item_ids)
        return sorted(
            (
                StoredRecord(citizen_id, item_id, department, dt.date.fromisoformat(as_of), value_json)
                for (item_id, department, as_of, _), value_json in zip(located, values, strict=True)
            ),
            key=attrgetter("item_id"),  # unique per citizen
        )

    def for_delivery(self, citizen_id: str, item_ids: Collection[str] | None = None) -> dict[str, tuple[str, str]]:
        """The records of :meth:`for_citizen` as a delivery writes them: item id to ``(as_of as an
        ISO date, value_json)``, in no particular order (a delivery lists items in catalog order).
        No record object, no date and no sort per call only to be undone again (188 records)."""
        located, values = self._opened(citizen_id, item_ids)
        return dict(
            zip(map(itemgetter(0), located), zip(map(itemgetter(2), located), values, strict=True), strict=True)
        )

    def _opened(
        self, citizen_id: str, item_ids: Collection[str] | None
    ) -> tuple[list[tuple[str, str, str, bytes]], list[str]]:
        """The citizen's records (all, or those among ``item_ids``) as ``(item_id, department, as_of
        as an ISO date, sealed value)``, in no particular order, and their values opened, in the
        same order."""
        self._records_key()  # without it, refused before anything is read
        if item_ids is not None and not item_ids:
            return [], []
        params: dict[str, Any]
        if self._dialect == "sqlite":
            read, params = _SQLITE_RECORDS_OF_CITIZEN_JOINED, {"citizen_id": citizen_id}
            if item_ids is not None:
                read, params["item_ids"] = _SQLITE_RECORDS_OF_CITIZEN_AMONG_JOINED, json.dumps(sorted(set(item_ids)))
            with storage_errors("read records"):
                [(count, data_key, joined)] = read_driver_rows(self._sessions, read, params)
            fields = _split_records(count, joined)
            key_id, _, wrapped_hex = (data_key or "").partition(_FIELD_SEPARATOR)
            wrapped = bytes.fromhex(wrapped_hex)
            located = list(zip(fields[0::4], fields[1::4], fields[2::4], map(bytes.fromhex, fields[3::4]), strict=True))
        else:
            read, params = _POSTGRES_RECORDS_OF_CITIZEN, {"citizen_id": citizen_id}
            if item_ids is not None:
                read, params["item_ids"] = _POSTGRES_RECORDS_AMONG, sorted(set(item_ids))
            with storage_errors("read records"):
                stored = read_driver_rows(self._sessions, read, params)
            key_id, wrapped = (stored[0].records_key_id or "", stored[0].wrapped_key or b"") if stored else ("", b"")
            located = [(r.item_id, r.department, r.as_of.isoformat(), r.value_sealed) for r in stored]
        if not located:
            return [], []
        return located, self._open_data_key(citizen_id, key_id, wrapped).open_many(located)

    def rewrap(self, old: RecordsKey, new: RecordsKey) -> int:
        """Wrap every citizen's data key under ``new`` instead of ``old`` (a records key rotation), in
        one transaction; returns how many were rewrapped. The sealed values do not change.

        Keys already under ``new`` are left as they are, so a rotation that was interrupted before
        its new key file replaced the old one can run again. A key under neither is refused, naming
        its records key, and nothing is changed.

        The database's current records key moves to ``new`` first: a gateway that stores a new data
        key from then on wraps it under ``new``, and on PostgreSQL one that read the old key beforehand
        holds it until it commits, so that the scan below sees, and rewraps, what it stored."""
        table = RecordKey.__table__
        assert isinstance(table, Table)
        rewrapped, last = 0, ""
        with storage_errors("rewrap the data keys"), write_connection(self._sessions) as connection:
            _MOVE_RECORDS_KEY.run(
                connection, {"key_id": new.key_id, "at": bind_instant(connection.dialect, dt.datetime.now(dt.UTC))}
            )
            while rows := connection.execute(
                select(table.c.citizen_id, table.c.records_key_id, table.c.wrapped_key)
                .where(table.c.citizen_id > last)
                .order_by(table.c.citizen_id)
                .limit(5000)
            ).all():
                changed = []
                for citizen_id, key_id, wrapped in rows:
                    if key_id == old.key_id:
                        changed.append(
                            {"c": citizen_id, "k": new.key_id, "w": old.rewrap(citizen_id, wrapped, into=new)}
                        )
                    elif key_id != new.key_id:
                        raise RecordsKeyError(
                            f"a data key is wrapped by records key {key_id}, neither {old.key_id} nor {new.key_id}"
                        )
                if changed:
                    connection.execute(
                        update(table)
                        .where(table.c.citizen_id == bindparam("c"))
                        .values(records_key_id=bindparam("k"), wrapped_key=bindparam("w")),
                        changed,
                    )
                rewrapped += len(changed)
                last = rows[-1][0]
        return rewrapped

    @staticmethod
    def erase_in(connection: Connection, citizen_id: str) -> int:
        """Crypto-shred a citizen's records in the caller's write transaction (``veilgate erase``: that of
        the log entry recording it, :func:`~veilgate_server.admin.erase_records`): destroy their data key
        and delete their sealed values; returns how many records were deleted. The audit log keeps
        its entries, which hold no record value, and stays verifiable. A department's next push for
        the citizen starts under a new data key.

        On SQLite the deleted rows are overwritten in the database file (``secure_delete``); their
        pages may remain in the write-ahead log until it is next reused. On PostgreSQL the dead
        rows remain until ``VACUUM`` reclaims them. Either way, without the data key nothing of
        theirs opens, but a backup taken before the erasure still holds the wrapped key: keep
        ``keys/records.key`` out of database backups, or erase from those too."""
        _require_length(citizen_id, "citizen_id", 64)
        previous = None
        if connection.dialect.name == "sqlite":  # whatever the build's default (SQLite's own is off)
            previous = int(connection.exec_driver_sql("PRAGMA secure_delete").scalar_one())
            connection.exec_driver_sql("PRAGMA secure_delete = ON")
        connection.execute(delete(RecordKey).where(RecordKey.citizen_id == citizen_id))
        erased = connection.execute(delete(Record).where(Record.citizen_id == citizen_id)).rowcount
        if previous is not None:  # the connection's later deletes as the build does them
            connection.exec_driver_sql(f"PRAGMA secure_delete = {previous}")
        return erased

    def count(self) -> int:
        with storage_errors("count records"), self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Record)) or 0

    def citizen_ids(self, *, limit: int) -> list[str]:
        """Up to ``limit`` distinct ids of citizens that have records, in ascending order."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        statement = select(Record.citizen_id).distinct().order_by(Record.citizen_id).limit(limit)
        with storage_errors("list citizens with records"), self._sessions() as session:
            return list(session.scalars(statement))


class RequestLedger:
    """Single-use request tokens (jti). A jti is consumed once per citizen; expired rows are purged.

    A row only has to outlive its token: once ``expires_at`` has passed, the token is refused as
    expired before it reaches the ledger, so the row can go. Each consume purges the same citizen's
    expired rows, which keeps the table bounded by the number of live tokens without a sweeper.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def consume(self, citizen_id: str, jti: str, *, expires_at: dt.datetime, now: dt.datetime) -> None:
        """Record ``jti`` as used by ``citizen_id``; :class:`TokenReplayed` if it already was.

        Exactly one of any number of concurrent calls with the same pair succeeds. The insert comes
        first and the purge spares the row just written, so a jti that is stored is never accepted
        again, whatever ``now`` says.
        """
        with storage_errors("record the request token"), write_connection(self._sessions) as connection:
            self.consume_in(connection, citizen_id, jti, expires_at=expires_at, now=now)

    @staticmethod
    def consume_in(
        connection: Connection, citizen_id: str, jti: str, *, expires_at: dt.datetime, now: dt.datetime
    ) -> None:
        """:meth:`consume` inside the caller's write transaction (the audit log's, for a call's
        entry and its token to commit together). Refuses before it writes anything."""
        _require_length(citizen_id, "citizen_id", 64)
        _require_length(jti, "jti", 128)
        _require_aware(expires_at, "expires_at")
        _require_aware(now, "now")
        dialect = connection.dialect
        row = {"citizen_id": citizen_id, "jti": jti, "expires_at": bind_instant(dialect, expires_at)}
        if not _CONSUME_TOKEN.run(connection, row):
            raise TokenReplayed("request token was already used")
        _PURGE_EXPIRED_TOKENS.run(connection, {"citizen_id": citizen_id, "now": bind_instant(dialect, now), "jti": jti})

    @staticmethod
    def give_back_in(connection: Connection, citizen_id: str, jti: str) -> None:
        """Undo :meth:`consume_in` of the same transaction: for a change that spent the token and
        was then refused, so that it leaves the transaction as it found it (the expired tokens it
        purged stay purged: they could never be accepted again anyway)."""
        _FORGET_TOKEN.run(connection, {"citizen_id": citizen_id, "jti": jti})


def _register_caller(
    sessions: sessionmaker[Session],
    row: RegisteredInstitution | RegisteredDepartment,
    certificate: ClientCertificate | None,
    *,
    action: str,
    exists: VeilgateError,
) -> None:
    """Insert a caller's row and, when given, its first certificate, in one transaction: ``exists``
    if the caller is registered already, ConfigurationError if the serial is on record already."""
    with storage_errors(action), write_session(sessions) as session:
        try:
            session.add(row)
            session.flush()
        except IntegrityError as e:
            raise exists from e
        if certificate is not None:
            try:
                session.add(certificate)
                session.flush()
            except IntegrityError as e:
                raise ConfigurationError(f"certificate serial {certificate.serial} is on record already") from e


def _first_certificate(
    kind: str, caller_id: str, serial: str | None, not_after: dt.datetime | None, at: dt.datetime
) -> ClientCertificate | None:
    if serial is None:
        return None
    _require_serial(serial, "certificate_serial")
    if not_after is not None:
        _require_aware(not_after, "certificate_not_after")
    return ClientCertificate(serial=serial, caller_kind=kind, caller_id=caller_id, issued_at=at, not_after=not_after)


class InstitutionRegistry:
    """Banks and insurers registered by the operator."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def register(
        self,
        institution_id: str,
        *,
        kind: str,
        name: str,
        at: dt.datetime,
        certificate_serial: str | None = None,
        certificate_not_after: dt.datetime | None = None,
    ) -> Institution:
        """Register an enabled institution; :class:`InstitutionAlreadyRegistered` if the id is taken.

        ``institution_id`` must match ``[a-z0-9][a-z0-9._-]{0,63}`` (it becomes part of a SPIFFE
        ID), ``kind`` be ``bank`` or ``insurer`` and ``name`` printable; anything else is a
        ValueError. ``certificate_serial`` puts the certificate issued to it on record in the same
        write (see :meth:`ClientCertificateRegistry.record`).
        """
        check_caller_id(institution_id)
        if kind not in INSTITUTION_KINDS:
            raise ValueError(f"institution kind must be one of {', '.join(INSTITUTION_KINDS)}")
        check_display_name(name, "name", 200)
        _require_aware(at, "at")
        certificate = _first_certificate("institution", institution_id, certificate_serial, certificate_not_after, at)
        row = RegisteredInstitution(institution_id=institution_id, kind=kind, name=name, enabled=True, registered_at=at)
        institution = _institution(row)
        _register_caller(
            self._sessions,
            row,
            certificate,
            action="register the institution",
            exists=InstitutionAlreadyRegistered("institution is already registered"),
        )
        return institution

    def get(self, institution_id: str) -> Institution:
        """The institution; :class:`InstitutionUnknown` if it was never registered."""
        with storage_errors("read the institution"):
            rows = read_driver_rows(self._sessions, _READ_INSTITUTION, {"institution_id": institution_id})
        if not rows:
            raise InstitutionUnknown("institution is not registered")
        return _institution(rows[0])

    def get_for_certificate(self, institution_id: str, serial_hex: str) -> tuple[Institution, bool]:
        """The institution, and whether the certificate ``serial_hex`` is on record for it and not
        revoked, in one read; :class:`InstitutionUnknown` if it was never registered."""
        with storage_errors("read the institution"):
            rows = read_driver_rows(
                self._sessions,
                _READ_INSTITUTION_WITH_CERTIFICATE,
                {"caller_id": institution_id, "serial": serial_hex},
            )
        if not rows:
            raise InstitutionUnknown("institution is not registered")
        return _institution(rows[0]), bool(rows[0].certificate_accepted)

    def set_enabled(self, institution_id: str, enabled: bool) -> Institution:
        """Enable or disable the institution (idempotent); :class:`InstitutionUnknown` if unknown."""
        return self._update(institution_id, "update the institution", enabled=enabled)

    def list(self) -> builtins.list[Institution]:
        """Every registered institution, by id."""
        statement = select(RegisteredInstitution).order_by(RegisteredInstitution.institution_id)
        with storage_errors("list institutions"), self._sessions() as session:
            return [_institution(row) for row in session.scalars(statement)]

    def _update(self, institution_id: str, action: str, **values: Any) -> Institution:
        statement = (
            update(RegisteredInstitution)
            .where(RegisteredInstitution.institution_id == institution_id)
            .values(**values)
            .returning(RegisteredInstitution)
        )
        with storage_errors(action), write_session(self._sessions) as session:
            row = session.scalars(statement).one_or_none()
            institution = None if row is None else _institution(row)
        if institution is None:
            raise InstitutionUnknown("institution is not registered")
        return institution


def _refusal(connection: Connection, e: EvaluationRow) -> Exception:
    """Why the consent could not be spent, checked in the documented order."""
    rows = _READ_CONSENT.run(connection, {"consent_id": e.consent_id})
    if not rows:
        return ConsentUnknown("consent is not registered")
    consent = rows[0]
    if consent.institution_id != e.institution_id:
        return ConsentWrongInstitution("consent is addressed to another institution")
    if consent.citizen_id != e.citizen_id:
        return ValueError("citizen_id is not the consent's citizen")
    if consent.revoked_at is not None:
        return ConsentRevoked("consent was revoked")
    if consent.uses >= consent.max_uses:
        return ConsentExhausted("consent has no uses left")
    return StorageError("could not record the evaluation: the consent changed while it was spent")


class ConsentLedger:
    """Consents registered by citizens, their use counters, and the evaluations made under them.

    The ledger enforces what depends on shared state and must hold under concurrency: a consent is
    registered once, revoked by its own citizen only, never used after revocation or beyond
    ``max_uses``, and a citizen's evaluations stay within the daily budget. Everything that can be
    checked from the token alone (signature, audience, purpose, pinned policies, time window) is the
    caller's job, before it calls :meth:`spend_use_and_record`.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def register(self, consent: ConsentRow) -> ConsentRow:
        """Store ``consent`` (made by :meth:`new_consent`) in a transaction of its own; see
        :meth:`register_in` for what is refused."""
        with storage_errors("register the consent"), write_connection(self._sessions) as connection:
            return self.register_in(connection, consent)

    @staticmethod
    def new_consent(
        *,
        consent_id: str,
        citizen_id: str,
        institution_id: str,
        purpose: str,
        policies: Sequence[tuple[str, str]],
        not_before: dt.datetime,
        expires_at: dt.datetime,
        max_uses: int,
        token: str,
        signing_key: bytes,
        at: dt.datetime,
    ) -> ConsentRow:
        """A consent to register, checked here, before any transaction (a ValueError inside the log
        writer's transaction would fail every call that shares it).

        ``policies`` lists ``(policy_id, sha256 hex)`` pairs, each id at most once; ``signing_key``
        is the citizen's key that verified ``token``. Malformed values (empty or over-long strings, a
        window that ends before it starts, ``max_uses < 1``, a key that is not 32 bytes, naive
        datetimes) are a ValueError: the caller should have refused the token already.
        """
        _require_length(consent_id, "consent_id", 128)
        _require_length(citizen_id, "citizen_id", 64)
        check_caller_id(institution_id)
        _require_length(purpose, "purpose", 64)
        _policies_json(policies)
        for value, name in ((not_before, "not_before"), (expires_at, "expires_at"), (at, "at")):
            _require_aware(value, name)
        if expires_at <= not_before:
            raise ValueError("expires_at must be later than not_before")
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        if not token:
            raise ValueError("token must not be empty")
        _require_key(signing_key, "signing_key")
        return ConsentRow(
            consent_id=consent_id,
            citizen_id=citizen_id,
            institution_id=institution_id,
            purpose=purpose,
            policies=tuple((policy_id, sha256) for policy_id, sha256 in policies),
            not_before=not_before.astimezone(dt.UTC),
            expires_at=expires_at.astimezone(dt.UTC),
            max_uses=max_uses,
            uses=0,
            token=token,
            registered_at=at.astimezone(dt.UTC),
            revoked_at=None,
            signing_key=signing_key,
        )

    @staticmethod
    def register_in(connection: Connection, consent: ConsentRow) -> ConsentRow:
        """Store ``consent`` (made by :meth:`new_consent`) inside the caller's write transaction (the
        audit log's, so that the registration, the citizen's request token and the call's entry
        commit together); the consent as stored.

        The very same token registered again by its citizen (a retry whose reply was lost) returns
        the consent as it stands and writes nothing. Any other consent under a registered id is
        :class:`ConsentAlreadyRegistered`, refused before anything is written: of racing
        registrations of one id, exactly one stores it."""
        dialect = connection.dialect
        row: dict[str, Any] = {
            "consent_id": consent.consent_id,
            "citizen_id": consent.citizen_id,
            "institution_id": consent.institution_id,
            "purpose": consent.purpose,
            "policies_json": _policies_json(consent.policies),
            "not_before": bind_instant(dialect, consent.not_before),
            "expires_at": bind_instant(dialect, consent.expires_at),
            "max_uses": consent.max_uses,
            "uses": 0,
            "token": consent.token,
            "signing_key": consent.signing_key,
            "registered_at": bind_instant(dialect, consent.registered_at),
            "revoked_at": None,
        }
        if _REGISTER_CONSENT.run(connection, row):
            return consent
        stored = _READ_CONSENT.run(connection, {"consent_id": consent.consent_id})
        if stored and stored[0].token == consent.token and stored[0].citizen_id == consent.citizen_id:
            return _consent(stored[0])
        raise ConsentAlreadyRegistered("consent is already registered")

    def get(self, consent_id: str) -> ConsentRow:
        """The consent; :class:`ConsentUnknown` if no consent has this id."""
        with storage_errors("read the consent"):
            rows = read_driver_rows(self._sessions, _READ_CONSENT, {"consent_id": consent_id})
        if not rows:
            raise ConsentUnknown("consent is not registered")
        return _consent(rows[0])

    def registered(self, consent_id: str) -> RegisteredConsent | None:
        """The consent and its citizen's enrolled signing key, in one read (every Evaluate reads
        both); None if no consent has this id."""
        with storage_errors("read the consent"):
            rows = read_driver_rows(self._sessions, _READ_CONSENT_WITH_ENROLLED_KEY, {"consent_id": consent_id})
        if not rows:
            return None
        row = rows[0]
        return RegisteredConsent(_consent(row), None if row.enrolled_key is None else bytes(row.enrolled_key))

    def for_citizen(
        self, citizen_id: str, *, limit: int | None = None, after: ConsentPosition | None = None
    ) -> list[ConsentRow]:
        """The citizen's consents, revoked ones included, newest registration first (then by id,
        descending): all of them, or up to ``limit``; with ``after``, those that come after it in
        that order (the next page, which consents registered meanwhile do not shift)."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        statement = select(Consent).where(Consent.citizen_id == citizen_id)
        if after is not None:
            _require_aware(after.registered_at, "after.registered_at")
            statement = statement.where(
                or_(
                    Consent.registered_at < after.registered_at,
                    and_(Consent.registered_at == after.registered_at, Consent.consent_id < after.consent_id),
                )
            )
        statement = statement.order_by(Consent.registered_at.desc(), Consent.consent_id.desc()).limit(limit)
        with storage_errors("list the citizen's consents"), self._sessions() as session:
            return [_consent(row) for row in session.scalars(statement)]

    def revoke(self, consent_id: str, *, citizen_id: str, at: dt.datetime) -> ConsentRow:
        """Revoke the citizen's consent as of ``at``, in a transaction of its own (see :meth:`revoke_in`)."""
        _require_aware(at, "at")
        with storage_errors("revoke the consent"), write_connection(self._sessions) as connection:
            return self.revoke_in(connection, consent_id, citizen_id=citizen_id, at=at)

    @staticmethod
    def revoke_in(connection: Connection, consent_id: str, *, citizen_id: str, at: dt.datetime) -> ConsentRow:
        """Revoke the citizen's consent as of ``at`` inside the caller's write transaction (the
        audit log's); the consent as it now stands.

        Revoking again is a no-op that keeps the first ``revoked_at``. A consent that does not exist
        and one that belongs to another citizen both raise :class:`ConsentUnknown`, before anything
        is written, so a citizen learns nothing about other citizens' consents.
        """
        params = {"consent_id": consent_id, "citizen_id": citizen_id, "at": bind_instant(connection.dialect, at)}
        revoked = _REVOKE_CONSENT.run(connection, params)
        if revoked:
            return _consent(revoked[0])
        stored = _READ_CONSENT.run(connection, {"consent_id": consent_id})
        if not stored or stored[0].citizen_id != citizen_id:
            raise ConsentUnknown("consent is not registered")
        return _consent(stored[0])

    def spend_use_and_record(
        self,
        *,
        consent_id: str,
        institution_id: str,
        request_id: str,
        citizen_id: str,
        policy_id: str,
        policy_sha256: str,
        decision: str,
        result_jws: str,
        request_hash: str,
        at: dt.datetime,
        daily_budget: int,
    ) -> EvaluationRow:
        """Spend one use of the consent and record the evaluation, in one transaction of its own
        (:meth:`spend_use_and_record_in` says what is checked, and in which order)."""
        _require_aware(at, "at")
        evaluation = EvaluationRow(
            institution_id=institution_id,
            request_id=request_id,
            consent_id=consent_id,
            citizen_id=citizen_id,
            policy_id=policy_id,
            policy_sha256=policy_sha256,
            decision=decision,
            result_jws=result_jws,
            request_hash=request_hash,
            created_at=_utc(at),
        )
        with storage_errors("record the evaluation"), write_connection(self._sessions) as connection:
            return self.spend_use_and_record_in(connection, evaluation, daily_budget=daily_budget)

    @staticmethod
    def spend_use_and_record_in(
        connection: Connection, evaluation: EvaluationRow, *, daily_budget: int
    ) -> EvaluationRow:
        """Spend one use of the consent and record ``evaluation``, inside the caller's write
        transaction (the audit log's, so that a call's entry and its use commit together).

        * If ``(institution_id, request_id)`` is already recorded, the stored row is returned
          unchanged and no use is spent (an idempotent retry; the caller compares ``request_hash``
          if it must tell a retry from a reused id).
        * Otherwise, with the consent row locked (by the spending ``UPDATE`` on PostgreSQL, plus an
          advisory lock per citizen; ``BEGIN IMMEDIATE`` on SQLite), the evaluation is refused with
          :class:`ConsentUnknown` (no such consent), :class:`ConsentWrongInstitution` (addressed to
          another institution), :class:`ConsentRevoked`, :class:`ConsentExhausted`
          (``uses >= max_uses``) or :class:`CitizenBudgetExhausted` (the citizen already has
          ``daily_budget`` evaluations created in the 24 hours before its ``created_at``), in that
          order.
        * Otherwise the evaluation is stored as given and ``uses`` grows by one.

        A refusal leaves the transaction as it found it (a use spent before the budget check is
        given back in the same transaction). Concurrent calls are safe: of N racing evaluations
        under a consent with k uses left, exactly k succeed; racing calls with the same request id
        record one evaluation, spend one use, and all return that row.
        """
        e = evaluation
        _require_length(e.consent_id, "consent_id", 128)
        check_caller_id(e.institution_id)
        _require_length(e.request_id, "request_id", 128)
        _require_length(e.citizen_id, "citizen_id", 64)
        _require_length(e.policy_id, "policy_id", 128)
        _require_sha256_hex(e.policy_sha256, "policy_sha256")
        _require_length(e.decision, "decision", 16)
        _require_sha256_hex(e.request_hash, "request_hash")
        if not e.result_jws:
            raise ValueError("result_jws must not be empty")
        _require_aware(e.created_at, "created_at")
        if daily_budget < 0:
            raise ValueError("daily_budget must not be negative")

        key = {"institution_id": e.institution_id, "request_id": e.request_id}
        # Two statements on the common path: every statement is a GIL hand-off for the single log
        # writer that runs this (measured: the writer's turn-taking, not SQL, bounded evaluations).
        _lock_citizen_budget(connection, e.citizen_id)
        usable = {"consent_id": e.consent_id, "institution_id": e.institution_id, "citizen_id": e.citizen_id}
        if not _SPEND_USE.run(connection, usable):
            recorded = _READ_EVALUATION.run(connection, key)
            if recorded:  # recorded by a racing call meanwhile: that is the answer
                return _evaluation(recorded[0])
            raise _refusal(connection, e)
        dialect = connection.dialect
        row = {name: getattr(e, name) for name in _EVALUATION_FIELDS}
        row["created_at"] = bind_instant(dialect, e.created_at)
        row["counted_citizen_id"] = e.citizen_id  # its own name: PostgreSQL types each parameter once
        row["since"], row["budget"] = bind_instant(dialect, e.created_at - BUDGET_WINDOW), daily_budget
        if _RECORD_EVALUATION_WITHIN_BUDGET.run(connection, row):
            return e
        # Not inserted: give the use back, then say why.
        _GIVE_BACK_USE.run(connection, {"consent_id": e.consent_id})
        recorded = _READ_EVALUATION.run(connection, key)
        if recorded:
            # A racing call under *another* consent (another row lock) recorded this request id
            # and committed first; the insert waited for it and did nothing.
            return _evaluation(recorded[0])
        raise CitizenBudgetExhausted("the citizen's daily evaluation budget is exhausted")

    def find_evaluation(self, institution_id: str, request_id: str) -> EvaluationRow | None:
        """The evaluation recorded for the institution's ``request_id``, or None."""
        with storage_errors("read the evaluation"):
            rows = read_driver_rows(
                self._sessions, _READ_EVALUATION, {"institution_id": institution_id, "request_id": request_id}
            )
        return _evaluation(rows[0]) if rows else None

    def evaluations_for_citizen(
        self, citizen_id: str, *, limit: int = 100, after: EvaluationPosition | None = None
    ) -> list[EvaluationRow]:
        """Up to ``limit`` evaluations under the citizen's consents, newest first; with ``after``,
        those that come after it in that order (the next page: a position that stays put however
        many evaluations are made meanwhile, as those come first)."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        statement = select(Evaluation).where(Evaluation.citizen_id == citizen_id)
        if after is not None:
            _require_aware(after.created_at, "after.created_at")
            statement = statement.where(
                or_(
                    Evaluation.created_at < after.created_at,
                    and_(
                        Evaluation.created_at == after.created_at,
                        tuple_(Evaluation.institution_id, Evaluation.request_id)
                        > tuple_(literal(after.institution_id), literal(after.request_id)),
                    ),
                )
            )
        statement = statement.order_by(
            Evaluation.created_at.desc(), Evaluation.institution_id, Evaluation.request_id
        ).limit(limit)
        with storage_errors("list the citizen's evaluations"), self._sessions() as session:
            return [_evaluation(row) for row in session.scalars(statement)]


class DepartmentRegistry:
    """Departments registered by the operator to push records. Which items a department owns is
    the catalog's to say, not this registry's."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def register(
        self,
        department_id: str,
        *,
        at: dt.datetime,
        certificate_serial: str | None = None,
        certificate_not_after: dt.datetime | None = None,
    ) -> Department:
        """Register an enabled department; :class:`DepartmentAlreadyRegistered` if it is already.
        ``department_id`` must match ``[a-z0-9][a-z0-9._-]{0,63}`` (it becomes part of a SPIFFE ID);
        anything else is a ValueError. ``certificate_serial`` puts the certificate issued to it on
        record in the same write (see :meth:`ClientCertificateRegistry.record`)."""
        check_caller_id(department_id)
        _require_aware(at, "at")
        certificate = _first_certificate("department", department_id, certificate_serial, certificate_not_after, at)
        row = RegisteredDepartment(department_id=department_id, enabled=True, registered_at=at)
        department = _department(row)
        _register_caller(
            self._sessions,
            row,
            certificate,
            action="register the department",
            exists=DepartmentAlreadyRegistered("department is already registered"),
        )
        return department

    def get(self, department_id: str) -> Department:
        """The department; :class:`DepartmentNotRegistered` if it was never registered."""
        with storage_errors("read the department"):
            rows = read_driver_rows(self._sessions, _READ_DEPARTMENT, {"department_id": department_id})
        if not rows:
            raise DepartmentNotRegistered("department is not registered")
        return _department(rows[0])

    def get_for_certificate(self, department_id: str, serial_hex: str) -> tuple[Department, bool]:
        """The department, and whether the certificate ``serial_hex`` is on record for it and not
        revoked, in one read; :class:`DepartmentNotRegistered` if it was never registered."""
        with storage_errors("read the department"):
            rows = read_driver_rows(
                self._sessions,
                _READ_DEPARTMENT_WITH_CERTIFICATE,
                {"caller_id": department_id, "serial": serial_hex},
            )
        if not rows:
            raise DepartmentNotRegistered("department is not registered")
        return _department(rows[0]), bool(rows[0].certificate_accepted)

    def set_enabled(self, department_id: str, enabled: bool) -> Department:
        """Enable or disable the department (idempotent); :class:`DepartmentNotRegistered` if unknown."""
        statement = (
            update(RegisteredDepartment)
            .where(RegisteredDepartment.department_id == department_id)
            .values(enabled=enabled)
            .returning(RegisteredDepartment)
        )
        with storage_errors("update the department"), write_session(self._sessions) as session:
            row = session.scalars(statement).one_or_none()
            department = None if row is None else _department(row)
        if department is None:
            raise DepartmentNotRegistered("department is not registered")
        return department

    def list(self) -> builtins.list[Department]:
        """Every registered department, by id."""
        statement = select(RegisteredDepartment).order_by(RegisteredDepartment.department_id)
        with storage_errors("list departments"), self._sessions() as session:
            return [_department(row) for row in session.scalars(statement)]


_CALLER_TABLES: Mapping[str, tuple[Any, Callable[[], VeilgateError]]] = {
    "institution": (
        RegisteredInstitution.institution_id,
        lambda: InstitutionUnknown("institution is not registered"),
    ),
    "department": (
        RegisteredDepartment.department_id,
        lambda: DepartmentNotRegistered("department is not registered"),
    ),
}


class ClientCertificateRegistry:
    """The client certificates on record for each institution and department: a mutual-TLS call is
    accepted only with one of its caller's, not revoked (``get_for_certificate`` of either registry).

    Renewing adds a certificate beside the caller's others, so that it can move to the new one
    without a gap; revoking the old one then, or at once when its key leaked, shuts it out for the
    next call. Serials are lower-case hex, as :mod:`~veilgate_server.crypto.institutions` writes them."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def record(
        self,
        caller_kind: str,
        caller_id: str,
        serial_hex: str,
        *,
        at: dt.datetime,
        not_after: dt.datetime | None = None,
    ) -> IssuedCertificate:
        """Put a certificate just issued to a registered caller on record (``not_after``: when it
        expires). The caller's unknown error (:class:`InstitutionUnknown`,
        :class:`DepartmentNotRegistered`) if it is not registered; ConfigurationError if the serial
        is on record already (for anyone)."""
        id_column, unknown = self._caller(caller_kind)
        _require_serial(serial_hex, "serial_hex")
        _require_aware(at, "at")
        if not_after is not None:
            _require_aware(not_after, "not_after")
        row = ClientCertificate(
            serial=serial_hex, caller_kind=caller_kind, caller_id=caller_id, issued_at=at, not_after=not_after
        )
        issued = _certificate(row)
        with storage_errors("record the certificate"):
            try:
                with write_session(self._sessions) as session:
                    if session.scalar(select(id_column).where(id_column == caller_id)) is None:
                        raise unknown()
                    session.add(row)
                    session.flush()
            except IntegrityError as e:
                raise ConfigurationError(f"certificate serial {serial_hex} is on record already") from e
        return issued

    def revoke(self, caller_kind: str, caller_id: str, serial_hex: str, *, at: dt.datetime) -> IssuedCertificate:
        """Revoke one of a caller's certificates from ``at`` on; revoking it again keeps the first
        time. :class:`CertificateUnknown` if no certificate with that serial is on record for it."""
        self._caller(caller_kind)
        _require_aware(at, "at")
        statement = select(ClientCertificate).where(
            ClientCertificate.serial == serial_hex,
            ClientCertificate.caller_kind == caller_kind,
            ClientCertificate.caller_id == caller_id,
        )
        with storage_errors("revoke the certificate"), write_session(self._sessions) as session:
            row = session.scalars(statement.with_for_update()).one_or_none()
            if row is not None and row.revoked_at is None:
                row.revoked_at = at
                session.flush()
            revoked = None if row is None else _certificate(row)
        if revoked is None:
            raise CertificateUnknown(f"no certificate with serial {serial_hex} is on record for {caller_id}")
        return revoked

    def list(self, caller_kind: str, caller_id: str) -> builtins.list[IssuedCertificate]:
        """A caller's certificates on record, newest first (revoked ones included)."""
        self._caller(caller_kind)
        statement = (
            select(ClientCertificate)
            .where(ClientCertificate.caller_kind == caller_kind, ClientCertificate.caller_id == caller_id)
            .order_by(ClientCertificate.issued_at.desc(), ClientCertificate.serial)
        )
        with storage_errors("list the certificates"), self._sessions() as session:
            return [_certificate(row) for row in session.scalars(statement)]

    def renewal_due(self, caller_kind: str) -> CertificateRenewal:
        """Of the enabled callers of a kind: the soonest expiry among each one's latest accepted
        certificate (None when none has a known expiry), and how many have no accepted certificate
        at all (each is shut out until it is given one). For alerting: a renewal is due before it."""
        id_column, _ = self._caller(caller_kind)
        enabled = id_column.class_.enabled.is_(True)
        accepted = (ClientCertificate.caller_kind == caller_kind) & ClientCertificate.revoked_at.is_(None)
        latest = (
            select(func.max(ClientCertificate.not_after).label("latest"))
            .join(id_column.class_, id_column == ClientCertificate.caller_id)
            .where(accepted, enabled)
            .group_by(ClientCertificate.caller_id)
            .subquery()
        )
        covered = select(ClientCertificate.serial).where(accepted, ClientCertificate.caller_id == id_column).exists()
        without = select(func.count()).select_from(id_column.class_).where(enabled, ~covered)
        with storage_errors("read the certificates' expiry"), self._sessions() as session:
            soonest = session.scalar(select(func.min(latest.c.latest)))
            uncovered = int(session.scalar(without) or 0)
        return CertificateRenewal(soonest=None if soonest is None else _utc(soonest), without_certificate=uncovered)

    @staticmethod
    def _caller(caller_kind: str) -> tuple[Any, Callable[[], VeilgateError]]:
        if caller_kind not in CALLER_KINDS:
            raise ValueError(f"caller kind must be one of {', '.join(CALLER_KINDS)}")
        return _CALLER_TABLES[caller_kind]


class Store:
    """Everything the gateway keeps, reached only through its repositories."""

    def __init__(
        self,
        engine: Engine,
        *,
        records_key: RecordsKey | None = None,
        reload_records_keys: Callable[[], Iterable[RecordsKey]] | None = None,
    ) -> None:
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self.citizens = CitizenRegistry(self._sessions)
        self.records = RecordStore(self._sessions, records_key, reload_records_keys)
        self.requests = RequestLedger(self._sessions)
        self.institutions = InstitutionRegistry(self._sessions)
        self.certificates = ClientCertificateRegistry(self._sessions)
        self.departments = DepartmentRegistry(self._sessions)
        self.consents = ConsentLedger(self._sessions)
        self.log = AuditLog(self._sessions)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        records_key: RecordsKeySource | None = None,
        reload_records_keys: Callable[[], Iterable[RecordsKey]] | None = None,
    ) -> Self:
        """Connect to ``url``; migrate the schema to the newest revision, or check that it is there.
        ``records_key`` seals and opens records (see :class:`RecordStore`); without it the store
        serves everything but records. Given as a function (one that makes the key file on first
        use), it is called only once the database has answered, so that a bad URL leaves nothing
        made behind. ``reload_records_keys`` gives the records keys on disk again, for a gateway
        to follow a rotation made by another process without a restart.

        Raises :class:`~veilgate.errors.ConfigurationError` for an unsupported URL and
        :class:`~veilgate.errors.StorageError` when the database cannot be reached or (with
        ``migrate=False``) is not at the expected schema revision.
        """
        engine = create_engine_for(url)
        try:
            if migrate:
                upgrade_schema(engine, records_key=records_key)
            else:
                check_schema(engine)
            key = records_key() if callable(records_key) else records_key
            store = cls(engine, records_key=key, reload_records_keys=reload_records_keys)
            if key is not None:
                store.records.check_records_key()
        except BaseException:
            engine.dispose()
            raise
        return store

    def apply(self, change: StateChange) -> None:
        """Make ``change`` in a write transaction of its own: for a call no audit log records (tools,
        tests). A recorded call makes its change in its log entry's transaction instead
        (:class:`~veilgate_server.storage.log.AppendRequest`)."""
        with storage_errors("save the change"), write_connection(self._sessions) as connection:
            change.apply(connection)

    def check_writable(self) -> None:
        """Raise StorageError when a write could not begin now for a reason a read does not find: on
        SQLite, a database file removed or replaced while in use (see ``SqliteWriterLock``), which
        the connections already open still read. Takes SQLite's writer lock for a moment; nothing
        on PostgreSQL, where a lost server fails reads as well."""
        lock = sqlite_writer_lock(self._sessions)
        if lock is not None:
            with lock:
                pass

    def close(self) -> None:
        """Close every pooled connection. The store must not be used afterwards."""
        close_kept_connections(self.engine)
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Repositories: the only way the gateway reads or writes its store.

Each repository method is one transaction and returns frozen dataclasses, never ORM objects, so no
caller can lazy-load, mutate or keep a session alive by accident. The repositories hold no business
rules (token verification, consent, policies live elsewhere); they do guarantee the storage-level
invariants the rest of the gateway relies on, on SQLite and PostgreSQL alike:

* a citizen id is enrolled at most once, even under concurrent enrolment (primary key);
* a request token id (``jti``) is consumed at most once per citizen, even under concurrent requests
  (primary key; on SQLite writers are also serialised with ``BEGIN IMMEDIATE``);
* a record is identified by ``(citizen_id, item_id)``; pushing it again replaces it.

Database failures surface as :class:`~veilgate.errors.StorageError` whose message names the
operation but never a record value, a key or an SQL parameter; the original exception is chained.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any, Self

from sqlalchemy import Engine, Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from veilgate.errors import CitizenAlreadyEnrolled, CitizenNotEnrolled, StorageError, TokenReplayed

from .db import WRITE_TRANSACTION, check_schema, create_engine_for, upgrade_schema
from .models import KEY_LENGTH, Citizen, Record, UsedRequestToken

__all__ = [
    "CitizenKeys",
    "CitizenRegistry",
    "RecordStore",
    "RequestLedger",
    "Store",
    "StoredRecord",
]


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


# --- helpers --------------------------------------------------------------------------------------


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    """Wrap SQLAlchemy/driver failures; the message names the action only, never values."""
    try:
        yield
    except SQLAlchemyError as e:
        raise StorageError(f"could not {action}: the database reported {type(e).__name__}") from e


@contextmanager
def _write(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a write transaction, committed on success and rolled back on any exception."""
    with sessions.begin() as session:
        # Procure the connection now, so the transaction starts as a writer (BEGIN IMMEDIATE on SQLite).
        session.connection(execution_options={WRITE_TRANSACTION: True})
        yield session


def _require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _require_length(value: str, name: str, maximum: int) -> None:
    if not value or len(value) > maximum:
        raise ValueError(f"{name} must be 1 to {maximum} characters long")


def _require_key(value: bytes, name: str) -> None:
    if len(value) != KEY_LENGTH:
        raise ValueError(f"{name} must be {KEY_LENGTH} bytes long")


def _keys(row: Citizen) -> CitizenKeys:
    return CitizenKeys(
        citizen_id=row.citizen_id,
        signing_key=bytes(row.signing_key),
        encryption_key=bytes(row.encryption_key),
        key_version=row.key_version,
        keys_updated_at=row.keys_updated_at.astimezone(dt.UTC),
    )


def _check_record(record: StoredRecord) -> dict[str, Any]:
    _require_length(record.citizen_id, "citizen_id", 64)
    _require_length(record.item_id, "item_id", 96)
    _require_length(record.department, "department", 64)
    return {
        "citizen_id": record.citizen_id,
        "item_id": record.item_id,
        "department": record.department,
        "as_of": record.as_of,
        "value_json": record.value_json,
    }


# --- repositories ---------------------------------------------------------------------------------


class CitizenRegistry:
    """Enrolled citizens and their current public keys."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def enroll(self, citizen_id: str, *, signing_key: bytes, encryption_key: bytes, at: dt.datetime) -> CitizenKeys:
        """Enrol ``citizen_id`` with key version 1; :class:`CitizenAlreadyEnrolled` if present."""
        _require_length(citizen_id, "citizen_id", 64)
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
        with _storage_errors("enroll the citizen"):
            try:
                with _write(self._sessions) as session:
                    session.add(row)
                    session.flush()
                    keys = _keys(row)
            except IntegrityError as e:
                # The inputs were checked above, so the only constraint left to violate is the
                # primary key: a concurrent or earlier enrolment of the same id won.
                raise CitizenAlreadyEnrolled("citizen is already enrolled") from e
        return keys

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
        with _storage_errors("rotate the citizen's keys"), _write(self._sessions) as session:
            row = session.scalars(statement).one_or_none()
            keys = None if row is None else _keys(row)
        if keys is None:
            raise CitizenNotEnrolled("citizen is not enrolled")
        return keys

    def keys_of(self, citizen_id: str) -> CitizenKeys:
        """The citizen's current keys; :class:`CitizenNotEnrolled` if the id is unknown."""
        with _storage_errors("read the citizen's keys"), self._sessions() as session:
            row = session.get(Citizen, citizen_id)
            keys = None if row is None else _keys(row)
        if keys is None:
            raise CitizenNotEnrolled("citizen is not enrolled")
        return keys

    def count(self) -> int:
        with _storage_errors("count citizens"), self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Citizen)) or 0


class RecordStore:
    """Records pushed by departments, one per ``(citizen_id, item_id)``."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def put_many(self, records: Iterable[StoredRecord], *, batch_size: int = 5000) -> int:
        """Insert or replace records; returns how many were accepted.

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
        written = 0
        iterator = iter(records)
        while batch := list(islice(iterator, batch_size)):
            rows: dict[tuple[str, str], dict[str, Any]] = {}
            for record in batch:
                rows[(record.citizen_id, record.item_id)] = _check_record(record)
            with _storage_errors("store records"), _write(self._sessions) as session:
                session.connection().execute(self._upsert(session), list(rows.values()))
            written += len(batch)
        return written

    @staticmethod
    def _upsert(session: Session) -> Any:
        table = Record.__table__
        assert isinstance(table, Table)
        dialect = session.get_bind().dialect.name
        if dialect == "sqlite":
            sqlite_insert = sqlite.insert(table)
            return sqlite_insert.on_conflict_do_update(
                index_elements=[table.c.citizen_id, table.c.item_id],
                set_={
                    "department": sqlite_insert.excluded.department,
                    "as_of": sqlite_insert.excluded.as_of,
                    "value_json": sqlite_insert.excluded.value_json,
                },
            )
        if dialect == "postgresql":
            pg_insert = postgresql.insert(table)
            return pg_insert.on_conflict_do_update(
                index_elements=[table.c.citizen_id, table.c.item_id],
                set_={
                    "department": pg_insert.excluded.department,
                    "as_of": pg_insert.excluded.as_of,
                    "value_json": pg_insert.excluded.value_json,
                },
            )
        raise StorageError(f"record upsert is not implemented for the {dialect} backend")

    def for_citizen(self, citizen_id: str, item_ids: Collection[str] | None = None) -> list[StoredRecord]:
        """The citizen's records ordered by ``item_id``: all of them, or those among ``item_ids``.

        Item ids with no stored record are simply absent from the result.
        """
        statement = select(Record).where(Record.citizen_id == citizen_id).order_by(Record.item_id)
        if item_ids is not None:
            if not item_ids:
                return []
            statement = statement.where(Record.item_id.in_(sorted(set(item_ids))))
        with _storage_errors("read records"), self._sessions() as session:
            return [
                StoredRecord(
                    citizen_id=row.citizen_id,
                    item_id=row.item_id,
                    department=row.department,
                    as_of=row.as_of,
                    value_json=row.value_json,
                )
                for row in session.scalars(statement)
            ]

    def count(self) -> int:
        with _storage_errors("count records"), self._sessions() as session:
            return session.scalar(select(func.count()).select_from(Record)) or 0

    def citizen_ids(self, *, limit: int) -> list[str]:
        """Up to ``limit`` distinct ids of citizens that have records, in ascending order."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        statement = select(Record.citizen_id).distinct().order_by(Record.citizen_id).limit(limit)
        with _storage_errors("list citizens with records"), self._sessions() as session:
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
        _require_length(citizen_id, "citizen_id", 64)
        _require_length(jti, "jti", 128)
        _require_aware(expires_at, "expires_at")
        _require_aware(now, "now")
        purge = delete(UsedRequestToken).where(
            UsedRequestToken.citizen_id == citizen_id,
            UsedRequestToken.expires_at < now,
            UsedRequestToken.jti != jti,
        )
        with _storage_errors("record the request token"):
            try:
                with _write(self._sessions) as session:
                    session.add(UsedRequestToken(citizen_id=citizen_id, jti=jti, expires_at=expires_at))
                    session.flush()
                    session.execute(purge, execution_options={"synchronize_session": False})
            except IntegrityError as e:
                raise TokenReplayed("request token was already used") from e


class Store:
    """Everything the gateway keeps, reached only through its repositories."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self.citizens = CitizenRegistry(self._sessions)
        self.records = RecordStore(self._sessions)
        self.requests = RequestLedger(self._sessions)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Self:
        """Connect to ``url``; migrate the schema to the newest revision, or check that it is there.

        Raises :class:`~veilgate.errors.ConfigurationError` for an unsupported URL and
        :class:`~veilgate.errors.StorageError` when the database cannot be reached or (with
        ``migrate=False``) is not at the expected schema revision.
        """
        engine = create_engine_for(url)
        try:
            if migrate:
                upgrade_schema(engine)
            else:
                check_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        """Close every pooled connection. The store must not be used afterwards."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

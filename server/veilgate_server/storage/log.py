"""The audit log's storage: entries, subtree hashes, checkpoints, and the group-commit writer.

The log is an RFC 9162 Merkle tree. Each entry gets the next dense, 0-based index; its leaf hash is
SHA-256(0x00 || entry). Every *complete aligned* subtree is written once, in the transaction that
completes it, and never changes again, so roots and proofs take O(log n) stored hashes
(:mod:`veilgate_server.core.merkle`) and nothing is rehashed from the entries on the hot path.

Storage layout (revision 0003):

* ``log_entries(idx, entry, leaf_hash, created_at)``: the entries; ``leaf_hash`` doubles as the
  level-0 subtree hash.
* ``log_subtrees(level, idx, hash)``: complete aligned subtrees of level **1 and up** only (level 0
  would repeat ``log_entries.leaf_hash``; :meth:`AuditLog.subtree_hashes` reads it from there, in the
  same query).
* ``log_head(id = 1, tree_size)``: one row, moved by every append with ``UPDATE ... RETURNING``. On
  PostgreSQL that row lock, held to the commit, makes replicas sharing a database assign indices one
  transaction after the other (no gap: the size and the rows commit together; no duplicate: the
  primary key). On SQLite ``BEGIN IMMEDIATE`` already serialises writers.
* ``log_checkpoints``: signed notes, at most one per tree size, kept under compare-and-swap.
* ``log_subjects`` and ``citizen_log_keys``: the *private* side. The published entries carry only a
  pseudonym keyed per citizen; these tables let the gateway find a citizen's entries and derive their
  pseudonym. :meth:`AuditLog.erase_citizen` deletes both, which unlinks the citizen from the entries
  while the log stays byte-for-byte verifiable.

:class:`LogWriter` batches concurrent appends into one transaction (group commit): callers block
until the transaction holding their entry has committed, and an error fails every caller of the
batch, so no index is ever handed out for an entry that is not durable.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    bindparam,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from veilgate.errors import InternalError, StorageError
from veilgate.merkle import HASH_SIZE, leaf_hash
from veilgate_server.core.merkle import Frontier, SubtreeKey, root_of

from ._session import (
    DriverSql,
    bind_instant,
    driver_cursor,
    kept_write_connection,
    read_driver_rows,
    read_rows,
    storage_errors,
    write_connection,
    write_session,
)
from .db import storage_error
from .models import (
    KEY_LENGTH,
    AuditLogCheckpoint,
    AuditLogEntry,
    AuditLogHead,
    AuditLogSubject,
    AuditLogSubtree,
    CitizenLogKey,
)

__all__ = [
    "AppendRequest",
    "AuditLog",
    "CheckpointConflict",
    "LogEntry",
    "LogWriter",
    "StoreHealth",
    "StoredCheckpoint",
    "WriterStats",
]

_log = logging.getLogger("veilgate.storage.log")

_HEAD_ID: Final = 1
_MAX_LEVEL: Final = 63

# Namespace of the PostgreSQL advisory lock that serialises checkpoint writers (b"vgcp").
_PG_CHECKPOINT_LOCK_KEY: Final = 0x76676370


class CheckpointConflict(StorageError):
    """A checkpoint was refused: another root for its size (a fork), an older size, or a root the log
    does not have. Nothing was stored."""


class CheckpointSuperseded(CheckpointConflict):
    """A checkpoint was refused only because a checkpoint over a larger tree is already stored: what
    racing replicas (or server processes) that sign the same growing log meet, and no sign of a fork."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored entry: ``entry`` is exactly the bytes whose SHA-256(0x00 || entry) is ``leaf_hash``."""

    index: int
    entry: bytes
    leaf_hash: bytes
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """An entry to append. ``subject_citizen_id`` (private, never stored in the entry itself) indexes
    the entry under the citizen it is about, for the citizen's own history; None when it is about no one.

    ``resolve``, when given, runs inside the append's transaction just before the entry is written
    and returns the entry's bytes (``entry`` is then unused). It is how a call makes its state change
    (:class:`~veilgate_server.storage.StateChange`) in the same transaction as its log entry, and
    writes the entry that says how the change went: a call's change and its entry commit together
    or not at all. It must use only the connection it is given; if it raises, the whole batch fails.
    """

    entry: bytes = b""
    subject_citizen_id: str | None = None
    resolve: Callable[[Connection], bytes] | None = None


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A stored checkpoint; ``note`` is the signed note verbatim."""

    tree_size: int
    root_hash: bytes
    note: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class WriterStats:
    """What a :class:`LogWriter` has committed so far (failed batches are not counted)."""

    batches: int
    entries: int

    @property
    def mean_batch_size(self) -> float:
        return self.entries / self.batches if self.batches else 0.0


# --- helpers --------------------------------------------------------------------------------------

_KEY_OF_CITIZEN = select(CitizenLogKey.key).where(CitizenLogKey.citizen_id == bindparam("citizen_id"))
_READ_KEY_OF_CITIZEN = DriverSql.select("LogKey", "citizen_log_keys", ["key"], "citizen_id = :citizen_id")
_SUBTREE_RANGE = select(AuditLogSubtree.idx, AuditLogSubtree.hash).where(
    AuditLogSubtree.level == bindparam("level"),
    AuditLogSubtree.idx >= bindparam("start"),
    AuditLogSubtree.idx < bindparam("end"),
)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


def _require_citizen_id(value: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise ValueError("citizen_id must be 1 to 64 characters long")


def _require_count(start: int, count: int) -> None:
    if start < 0 or count < 0:
        raise ValueError("start and count must not be negative")


def _check_request(request: AppendRequest) -> None:
    if request.resolve is None:
        _check_entry(request.entry)
    if request.subject_citizen_id is not None:
        _require_citizen_id(request.subject_citizen_id)


def _check_entry(entry: object) -> None:
    if not isinstance(entry, bytes) or not entry:
        raise ValueError("a log entry must be non-empty bytes")


def _entry_of(request: AppendRequest, connection: Connection) -> bytes:
    if request.resolve is None:
        return request.entry
    entry = request.resolve(connection)
    _check_entry(entry)
    return entry


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


def _checkpoint(row: AuditLogCheckpoint) -> StoredCheckpoint:
    return StoredCheckpoint(
        tree_size=row.tree_size, root_hash=bytes(row.root_hash), note=row.note, created_at=_utc(row.created_at)
    )


def _placeholder(dialect: Dialect) -> str:
    """The driver's positional parameter mark, for SQL written out for the driver's cursor."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def _read_subtrees(connection: Connection, keys: Sequence[SubtreeKey]) -> dict[SubtreeKey, bytes]:
    """Every stored hash among ``keys`` in one query; absent keys are absent from the result."""
    by_level: dict[int, set[int]] = {}
    for level, index in keys:
        if not 0 <= level <= _MAX_LEVEL or index < 0:
            raise ValueError(f"({level}, {index}) is not a subtree key")
        by_level.setdefault(level, set()).add(index)
    if not by_level:
        return {}
    # One primary-key range per level (``level = ? AND idx IN (...)``): a row-value IN list such as
    # ``(level, idx) IN (VALUES ...)`` makes SQLite scan the whole table, so proofs would grow with the log.
    # The statement's shape differs per proof, so it is written as driver SQL: building it through the
    # SQL expression layer cost about 1.2 ms of a 1.4 ms proof (measured at 100k entries).
    mark = _placeholder(connection.dialect)
    parts: list[str] = []
    params: list[int] = []
    for level, indices in sorted(by_level.items()):
        marks = ", ".join([mark] * len(indices))
        if level == 0:
            parts.append(f"SELECT 0, idx, leaf_hash FROM log_entries WHERE idx IN ({marks})")  # noqa: S608
        else:
            parts.append(
                f"SELECT level, idx, hash FROM log_subtrees WHERE level = {mark} AND idx IN ({marks})"  # noqa: S608
            )
            params.append(level)
        params.extend(sorted(indices))
    sql = " UNION ALL ".join(parts)  # only placeholders and fixed text: no value is ever interpolated
    with driver_cursor(connection) as cursor:  # SQLAlchemy's execution would cost more than the read
        cursor.execute(sql, tuple(params))
        rows = cursor.fetchall()
    return {(int(level), int(index)): bytes(value) for level, index, value in rows}


class _ConnectionReader:
    """:class:`~veilgate_server.core.merkle.SubtreeReader` inside an open transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def subtree_hashes(self, keys: Sequence[SubtreeKey]) -> Mapping[SubtreeKey, bytes]:
        return _read_subtrees(self._connection, keys)


class _EdgeReader:
    """A reader over a cached frontier edge, to rebuild a :class:`Frontier` without I/O."""

    def __init__(self, hashes: Mapping[SubtreeKey, bytes]) -> None:
        self._hashes = hashes

    def subtree_hashes(self, keys: Sequence[SubtreeKey]) -> Mapping[SubtreeKey, bytes]:
        return self._hashes


_CATCH_UP_LEAVES: Final = 64
"""At most this many entries appended by others since this process's last batch are caught up leaf
by leaf (:meth:`AuditLog._frontier_at`); more are read back from the stored subtrees."""


def _read_leaf_hashes(connection: Connection, start: int, end: int) -> list[bytes]:
    """The leaf hashes of entries ``start <= i < end``, in index order; every one of them, or
    InternalError (the log's head counts entries its table does not hold)."""
    mark = _placeholder(connection.dialect)
    sql = f"SELECT leaf_hash FROM log_entries WHERE idx >= {mark} AND idx < {mark} ORDER BY idx"  # noqa: S608
    with driver_cursor(connection) as cursor:
        cursor.execute(sql, (start, end))
        rows = cursor.fetchall()
    hashes = [bytes(value) for (value,) in rows]
    if len(hashes) != end - start:
        raise InternalError(f"the log store holds {len(hashes)} of entries {start} to {end - 1}")
    return hashes


@dataclass(frozen=True, slots=True)
class _AppendSql:
    """The statements of an append, as constant SQL in the driver's own parameter style."""

    claim: str
    """Move the head by the batch's size and return the old size, in one round trip: on PostgreSQL
    the UPDATE's row lock is what serialises replicas (SQLite: BEGIN IMMEDIATE already did)."""
    insert_entries: str
    insert_subtrees: str
    insert_subjects: str


_APPEND_SQL: Final = {
    "sqlite": _AppendSql(
        claim="UPDATE log_head SET tree_size = tree_size + ? WHERE id = 1 RETURNING tree_size",
        insert_entries="INSERT INTO log_entries (idx, entry, leaf_hash, created_at) VALUES (?, ?, ?, ?)",
        insert_subtrees="INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)",
        insert_subjects="INSERT INTO log_subjects (citizen_id, idx) VALUES (?, ?)",
    ),
    "postgresql": _AppendSql(
        claim="UPDATE log_head SET tree_size = tree_size + %s WHERE id = 1 RETURNING tree_size",
        insert_entries="INSERT INTO log_entries (idx, entry, leaf_hash, created_at) VALUES (%s, %s, %s, %s)",
        insert_subtrees="INSERT INTO log_subtrees (level, idx, hash) VALUES (%s, %s, %s)",
        insert_subjects="INSERT INTO log_subjects (citizen_id, idx) VALUES (%s, %s)",
    ),
}


def _append_sql(dialect: Dialect) -> _AppendSql:
    sql = _APPEND_SQL.get(dialect.name)
    if sql is None:
        raise StorageError(f"the audit log is not implemented for the {dialect.name} backend")
    return sql


# --- the repository -------------------------------------------------------------------------------


class AuditLog:
    """The audit log's tables; reached as ``store.log``. Also a :class:`SubtreeReader` for proofs.

    ``clock`` gives the ``created_at`` of entries and pseudonym keys (injected in tests).
    """

    def __init__(self, sessions: sessionmaker[Session], *, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self._sessions = sessions
        self._clock = clock
        # The frontier after the last append *this process* committed: (tree size, edge hashes).
        # Only a hint: an append uses it when log_head still holds that size, and otherwise (another
        # replica appended meanwhile) rebuilds the frontier from log_subtrees in its transaction.
        self._cached_edge: tuple[int, dict[SubtreeKey, bytes]] = (0, {})
        self._cache_lock = threading.Lock()

    # -- appends -----------------------------------------------------------------------------------

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[int]:
        """Append the entries in order, in ONE write transaction; their indices, in the same order.

        The transaction first moves ``log_head`` by the batch's size and reads the old size back
        (one ``UPDATE ... RETURNING``, whose row lock serialises replicas on PostgreSQL until the
        commit), then inserts the entries with the next dense indices, the subtrees they complete,
        and the subject rows.
        All or nothing: on any failure nothing is written and :class:`StorageError` is raised. A
        malformed request (empty entry, bad citizen id) is a ValueError before anything is written.
        """
        for request in requests:
            _check_request(request)
        if not requests:
            return []
        now = self._clock()
        _require_aware(now, "the log clock's time")
        with (
            storage_errors("append to the audit log"),
            kept_write_connection(self._sessions) as connection,
            driver_cursor(connection) as cursor,
        ):
            sql = _append_sql(connection.dialect)
            cursor.execute(sql.claim, (len(requests),))
            claimed = cursor.fetchone()
            if claimed is None:
                raise StorageError("could not append to the audit log: its head row is missing")
            size = claimed[0] - len(requests)
            frontier = self._frontier_at(size, connection)
            created_at = bind_instant(connection.dialect, now)  # once per batch, not per row
            entries: list[tuple[Any, ...]] = []
            subtrees: list[tuple[Any, ...]] = []
            subjects: list[tuple[Any, ...]] = []
            for index, request in enumerate(requests, start=size):
                entry = _entry_of(request, connection)
                leaf = leaf_hash(entry)
                entries.append((index, entry, leaf, created_at))
                for completed in frontier.append(leaf):
                    if completed.level > 0:
                        subtrees.append((completed.level, completed.index, completed.hash))
                if request.subject_citizen_id is not None:
                    subjects.append((request.subject_citizen_id, index))
            # On the driver's cursor: these statements never change, and SQLAlchemy's execution
            # (and, for compiled statements, its per-row parameter processing) cost more than they.
            cursor.executemany(sql.insert_entries, entries)
            if subtrees:
                cursor.executemany(sql.insert_subtrees, subtrees)
            if subjects:
                cursor.executemany(sql.insert_subjects, subjects)
        # Committed: remember the new frontier for the next append.
        with self._cache_lock:
            if frontier.size > self._cached_edge[0]:
                self._cached_edge = (frontier.size, {(s.level, s.index): s.hash for s in frontier.edge})
        return list(range(size, size + len(requests)))

    def _frontier_at(self, size: int, connection: Connection) -> Frontier:
        """The frontier of the stored log of ``size`` entries. From this process's last batch when
        no other appended since; when others appended a few entries since (replicas take turns),
        that frontier extended by their leaf hashes, read in one range (about half the time of
        reading the edge's subtrees back: 16 against 31 µs at 50k entries, measured); otherwise
        from the stored subtrees."""
        with self._cache_lock:
            cached_size, edge = self._cached_edge
        try:
            if cached_size == size:
                return Frontier.from_subtrees(size, _EdgeReader(edge))
            if 0 < cached_size < size <= cached_size + _CATCH_UP_LEAVES:
                frontier = Frontier.from_subtrees(cached_size, _EdgeReader(edge))
                for leaf in _read_leaf_hashes(connection, cached_size, size):
                    frontier.append(leaf)
                return frontier
            return Frontier.from_subtrees(size, _ConnectionReader(connection))
        except InternalError as e:
            # A stored subtree of the right edge is missing or malformed: refuse to extend the log.
            raise StorageError("could not append to the audit log: its stored hashes are incomplete") from e

    # -- reads -------------------------------------------------------------------------------------

    def tree_size(self) -> int:
        """The number of committed entries."""
        statement = select(AuditLogHead.tree_size).where(AuditLogHead.id == _HEAD_ID)
        with storage_errors("read the audit log's size"), self._sessions() as session:
            size = session.scalar(statement)
        if size is None:
            raise StorageError("could not read the audit log's size: its head row is missing")
        return int(size)

    def size_and_first_outside(self) -> tuple[int, int | None]:
        """The committed size, and the lowest index of a stored entry outside ``0 <= i < size`` (None
        when there is none), read in one statement: one snapshot, so that an entry appended since
        is never taken for one written beside the gateway."""
        head = select(AuditLogHead.tree_size).where(AuditLogHead.id == _HEAD_ID).scalar_subquery()
        outside = (
            select(func.min(AuditLogEntry.idx))
            .where((AuditLogEntry.idx < 0) | (AuditLogEntry.idx >= head))
            .scalar_subquery()
        )
        with storage_errors("read the audit log's size"), self._sessions() as session:
            row = session.execute(select(head, outside)).one()
        if row[0] is None:
            raise StorageError("could not read the audit log's size: its head row is missing")
        return int(row[0]), None if row[1] is None else int(row[1])

    def subtree_hashes(self, keys: Sequence[SubtreeKey]) -> dict[SubtreeKey, bytes]:
        """The stored hash of each ``(level, index)`` in ``keys``, in one query (level 0: leaf hashes).

        Keys with no stored subtree (not complete yet, or beyond the log) are absent from the result.
        """
        with storage_errors("read the audit log's subtree hashes"), self._sessions() as session:
            return _read_subtrees(session.connection(), keys)

    def subtree_range(self, level: int, start: int, end: int) -> dict[SubtreeKey, bytes]:
        """Stored hashes of the level-``level`` subtrees with ``start <= index < end`` (level >= 1):
        one primary-key range read, for whole-log passes that walk the subtrees in order."""
        if not 1 <= level <= _MAX_LEVEL or not 0 <= start <= end:
            raise ValueError(f"level {level}, [{start}, {end}) is not a subtree range")
        params = {"level": level, "start": start, "end": end}
        with storage_errors("read audit log subtrees"):
            rows = read_rows(self._sessions, _SUBTREE_RANGE, params)
        return {(level, int(index)): bytes(value) for index, value in rows}

    def hashed_entries(self, start: int, count: int) -> list[tuple[int, bytes, bytes]]:
        """``(index, entry, leaf_hash)`` for ``start <= i < start + count``: a plain column read for
        whole-log passes (verification, export), several times cheaper than :meth:`entries`."""
        _require_count(start, count)
        bind = self._sessions.kw.get("bind")
        assert isinstance(bind, Engine)
        mark = _placeholder(bind.dialect)
        sql = f"SELECT idx, entry, leaf_hash FROM log_entries WHERE idx >= {mark} AND idx < {mark} ORDER BY idx"  # noqa: S608
        # The driver's own cursor: its rows are plain tuples of int and bytes on both drivers, and
        # building SQLAlchemy rows and unpacking them cost a quarter of `veilgate audit verify`.
        with storage_errors("read audit log entries"), bind.connect() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (start, start + count))
                rows: list[tuple[int, bytes, bytes]] = cursor.fetchall()
            except bind.dialect.loaded_dbapi.Error as e:
                raise storage_error("read audit log entries", e) from e
            finally:
                cursor.close()
        return rows

    def entries(self, start: int, count: int) -> list[LogEntry]:
        """The entries with indices ``start <= i < start + count`` that exist, in index order."""
        _require_count(start, count)
        statement = (
            select(AuditLogEntry)
            .where(AuditLogEntry.idx >= start, AuditLogEntry.idx < start + count)
            .order_by(AuditLogEntry.idx)
        )
        with storage_errors("read audit log entries"), self._sessions() as session:
            return [
                LogEntry(
                    index=row.idx,
                    entry=bytes(row.entry),
                    leaf_hash=bytes(row.leaf_hash),
                    created_at=_utc(row.created_at),
                )
                for row in session.scalars(statement)
            ]

    def leaf_hashes(self, start: int, count: int) -> list[bytes]:
        """The leaf hashes of entries ``start <= i < start + count`` that exist, in index order."""
        _require_count(start, count)
        statement = (
            select(AuditLogEntry.leaf_hash)
            .where(AuditLogEntry.idx >= start, AuditLogEntry.idx < start + count)
            .order_by(AuditLogEntry.idx)
        )
        with storage_errors("read audit log leaf hashes"), self._sessions() as session:
            return [bytes(value) for value in session.scalars(statement)]

    # -- the private side: subjects and pseudonym keys ----------------------------------------------

    def indices_for_citizen(self, citizen_id: str, *, limit: int = 1000, before: int | None = None) -> list[int]:
        """Up to ``limit`` indices of entries about the citizen, newest (highest index) first; with
        ``before``, only those below it (the next page)."""
        _require_citizen_id(citizen_id)
        if limit < 0:
            raise ValueError("limit must not be negative")
        statement = select(AuditLogSubject.idx).where(AuditLogSubject.citizen_id == citizen_id)
        if before is not None:
            statement = statement.where(AuditLogSubject.idx < before)
        statement = statement.order_by(AuditLogSubject.idx.desc()).limit(limit)
        with storage_errors("read the citizen's log entries"), self._sessions() as session:
            return [int(index) for index in session.scalars(statement)]

    def pseudonym_key(self, citizen_id: str, *, create: bool) -> bytes | None:
        """The citizen's 32-byte pseudonym key; with ``create``, a random one is made if there is none.

        Concurrent creators all get the same key (insert-if-absent, then read back the winner).
        Without ``create``, None when the citizen has no key (never logged, or erased).
        """
        _require_citizen_id(citizen_id)
        params = {"citizen_id": citizen_id}
        with storage_errors("read the citizen's pseudonym key"):
            rows = read_driver_rows(self._sessions, _READ_KEY_OF_CITIZEN, params)
        if rows or not create:
            return bytes(rows[0][0]) if rows else None
        row = {"citizen_id": citizen_id, "key": secrets.token_bytes(KEY_LENGTH), "created_at": self._clock()}
        with storage_errors("create the citizen's pseudonym key"), write_connection(self._sessions) as connection:
            connection.execute(self._insert_key_if_absent(connection), [row])
            key = connection.execute(_KEY_OF_CITIZEN, params).scalar_one()
        return bytes(key)

    @staticmethod
    def _insert_key_if_absent(connection: Connection) -> Any:
        dialect = connection.dialect.name
        if dialect == "sqlite":
            return sqlite.insert(CitizenLogKey).on_conflict_do_nothing(index_elements=["citizen_id"])
        if dialect == "postgresql":
            return postgresql.insert(CitizenLogKey).on_conflict_do_nothing(index_elements=["citizen_id"])
        raise StorageError(f"pseudonym keys are not implemented for the {dialect} backend")

    def erase_citizen(self, citizen_id: str) -> None:
        """Delete the citizen's pseudonym key and subject index (idempotent); the entries stay, so the
        log stays verifiable, but nothing links them to the citizen any more."""
        _require_citizen_id(citizen_id)
        with storage_errors("erase the citizen from the audit log index"), write_session(self._sessions) as session:
            connection = session.connection()
            connection.execute(delete(CitizenLogKey).where(CitizenLogKey.citizen_id == citizen_id))
            connection.execute(delete(AuditLogSubject).where(AuditLogSubject.citizen_id == citizen_id))

    # -- checkpoints -------------------------------------------------------------------------------

    def store_checkpoint(self, tree_size: int, root_hash: bytes, note: str, *, at: dt.datetime) -> StoredCheckpoint:
        """Record a signed checkpoint, under compare-and-swap; the checkpoint as stored.

        * The same size with the same root again is idempotent: the stored checkpoint (and its first
          note) is returned.
        * :class:`CheckpointConflict` when a *different* root is stored for the size (signing it
          would fork the log), when the size is smaller than the latest stored checkpoint's, when the
          log has fewer than ``tree_size`` entries, or when ``root_hash`` is not the root of the
          stored subtree hashes for that size.

        Checkpoint writers are serialised (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory
        lock), so racing replicas cannot both pass the checks.
        """
        if not isinstance(tree_size, int) or isinstance(tree_size, bool) or tree_size < 0:
            raise ValueError("tree_size must be a non-negative integer")
        if not isinstance(root_hash, bytes) or len(root_hash) != HASH_SIZE:
            raise ValueError(f"root_hash must be {HASH_SIZE} bytes")
        if not note:
            raise ValueError("note must not be empty")
        _require_aware(at, "at")
        with storage_errors("store the checkpoint"), write_session(self._sessions) as session:
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHECKPOINT_LOCK_KEY})
            existing = session.get(AuditLogCheckpoint, tree_size)
            if existing is not None:
                if bytes(existing.root_hash) != root_hash:
                    raise CheckpointConflict(
                        f"a different root is already stored for tree size {tree_size}; refusing to fork the log"
                    )
                return _checkpoint(existing)
            latest = session.scalar(select(func.max(AuditLogCheckpoint.tree_size)))
            if latest is not None and tree_size < latest:
                raise CheckpointSuperseded(f"tree size {tree_size} is older than the latest checkpoint ({latest})")
            size = session.scalar(select(AuditLogHead.tree_size).where(AuditLogHead.id == _HEAD_ID))
            if size is None or tree_size > size:
                raise CheckpointConflict(f"the log has fewer than {tree_size} entries")
            try:
                stored_root = root_of(tree_size, _ConnectionReader(connection))
            except InternalError as e:
                raise StorageError("could not store the checkpoint: the log's subtree hashes are incomplete") from e
            if stored_root != root_hash:
                raise CheckpointConflict(f"the root is not the log's root at tree size {tree_size}")
            row = AuditLogCheckpoint(tree_size=tree_size, root_hash=root_hash, note=note, created_at=at)
            session.add(row)
            session.flush()
            return _checkpoint(row)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The stored checkpoint of the largest tree size, or None."""
        statement = select(AuditLogCheckpoint).order_by(AuditLogCheckpoint.tree_size.desc()).limit(1)
        with storage_errors("read the latest checkpoint"), self._sessions() as session:
            row = session.scalars(statement).one_or_none()
            return None if row is None else _checkpoint(row)

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, by tree size."""
        statement = select(AuditLogCheckpoint).order_by(AuditLogCheckpoint.tree_size)
        with storage_errors("read the checkpoints"), self._sessions() as session:
            return [_checkpoint(row) for row in session.scalars(statement)]


# --- group commit ---------------------------------------------------------------------------------


class _Pending:
    """One caller's entry. ``done`` is held from birth and released when the outcome is known: the
    cheapest wake-up CPython has (one waiter per lock, no shared condition to fight over).

    A batch's callers are woken one after another, not all at once: the writer releases the first,
    and each caller, once awake, releases the one after it (``next``). Woken together, the callers
    of a batch of 64 all became runnable at once, and most of them woke only to find another holding
    the GIL and sleep again; each such wake-up is a context switch, and switches were the largest
    part of an append's CPU (see docs/performance.md). Passed on, a caller is woken about when the
    one before it is done with the GIL.

    Passing on is done exactly once per caller, by whoever takes ``passing`` first: the caller when
    it wakes, or, for a caller that gave up waiting (``abandoned``), whoever released it. So a
    caller that timed out never breaks the chain behind it.
    """

    __slots__ = ("abandoned", "cancelled", "done", "index", "next", "passing", "request")

    def __init__(self, request: AppendRequest) -> None:
        self.request = request
        self.index: int | None = None
        self.cancelled = False
        self.abandoned = False
        self.next: _Pending | None = None
        self.done = threading.Lock()
        self.done.acquire()
        self.passing = threading.Lock()

    def wake(self) -> None:
        """Release this caller; if it has given up waiting, wake the next in its stead."""
        pending: _Pending | None = self
        while pending is not None:
            pending.done.release()
            if not (pending.abandoned and pending.passing.acquire(blocking=False)):
                return
            pending = pending.next

    def pass_on(self) -> None:
        """Called by the woken caller: wake the next one, unless its releaser already did."""
        if self.next is not None and self.passing.acquire(blocking=False):
            self.next.wake()

    def give_up(self) -> bool:
        """Called by a caller whose wait timed out: True if it was released meanwhile after all
        (it passed on, and its outcome is known), False if it is now abandoned."""
        self.abandoned = True
        if self.done.acquire(blocking=False):
            self.pass_on()
            return True
        return False


class _Batch:
    __slots__ = ("error", "items", "opened_at", "taken")

    def __init__(self, opened_at: float) -> None:
        self.items: list[_Pending] = []
        self.opened_at = opened_at
        self.taken = False
        self.error: BaseException | None = None


class StoreHealth:
    """Whether the store answers, as the log writer and the checkpointer last found it.

    Every call appends to the log, so while the store fails every call fails closed, and a line per
    failed batch (169 in a ten-second outage) hid the one that mattered. This logs the change of
    state once each way, with the database's own words, and tells its listeners (the gRPC health
    service, so that a load balancer stops sending calls that can only fail). The checkpointer's
    round, once a second, notices the store answering again when no call comes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._listeners: list[Callable[[bool], None]] = []

    def listen(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(False)`` when the store starts failing, ``listener(True)`` when it answers again."""
        self._listeners.append(listener)

    @property
    def failing(self) -> bool:
        return self._failures > 0

    def failed(self, error: StorageError) -> None:
        with self._lock:  # listeners are told in order, the writer's and the checkpointer's alike
            self._failures += 1
            if self._failures == 1:
                cause = f" ({error.cause})" if error.cause else ""
                _log.error("the store is failing: %s%s; every call fails closed until it answers", error.message, cause)
                for listener in self._listeners:
                    listener(False)

    def answered(self) -> None:
        if not self._failures:  # every batch calls this: no lock while all is well
            return
        with self._lock:
            if self._failures:
                _log.warning("the store answers again, after %d failed attempts", self._failures)
                self._failures = 0
                for listener in self._listeners:
                    listener(True)


class LogWriter:
    """Group commit in front of :meth:`AuditLog.append_batch`.

    Callers of :meth:`append` enqueue and block. One daemon thread takes the oldest batch, commits it
    in one transaction, and wakes its callers with their indices, or with the error: a caller gets an
    index only once its entry is durable, and if the commit fails every caller of that batch gets
    :class:`StorageError` (the RPC then fails closed with UNAVAILABLE).

    Coalescing: while one batch commits, new arrivals queue up and form the next batch, so batches
    grow with load by themselves. On top of that the writer may wait up to ``linger_seconds`` (from
    the later of the batch's first arrival and the end of the previous commit) for more callers, but
    only for as many as the last round had (the previous batch plus those who queued during its
    commit): a lone caller never waits, N closed-loop callers are gathered into one transaction
    instead of two half-sized ones, and ``linger_seconds`` bounds the wait when they do not come
    back. A batch holds at most ``max_batch`` entries.
    """

    def __init__(
        self,
        log: AuditLog,
        *,
        max_batch: int = 256,
        linger_seconds: float = 0.0005,
        health: StoreHealth | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if linger_seconds < 0:
            raise ValueError("linger_seconds must not be negative")
        self._log = log
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._health = health or StoreHealth()
        self._cond = threading.Condition(threading.Lock())
        self._batches: deque[_Batch] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._linger_target = 0  # while > 0, the writer is lingering until the head batch has this many
        self._expected = 1  # callers seen in the last round (see _run): how many to linger for
        self._batches_committed = 0
        self._entries_committed = 0

    def start(self) -> None:
        """Start the writer thread; appends are refused before and after its life."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("the log writer was already started")
            self._thread = threading.Thread(target=self._run, name="veilgate-log-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new appends, commit what is queued, and stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(batches=self._batches_committed, entries=self._entries_committed)

    @property
    def queued(self) -> int:
        """How many appends wait for their transaction to begin (a gauge for metrics)."""
        with self._cond:
            return sum(len(batch.items) for batch in self._batches)

    def append(self, request: AppendRequest, *, timeout: float = 10.0) -> int:
        """Append one entry; its index, once the transaction holding it has committed.

        Raises :class:`StorageError` if the commit failed, if the writer is not running, or after
        ``timeout`` seconds. A timed-out entry that the writer had not yet taken is withdrawn and
        never logged; one already being committed may still land in the log, but its caller fails
        all the same, so a reply never goes out without its log entry.
        """
        _check_request(request)
        pending = _Pending(request)
        with self._cond:
            if self._thread is None or self._closed:
                raise StorageError("could not append to the audit log: the log writer is not running")
            batches = self._batches
            if batches and len(batches[-1].items) < self._max_batch:
                batch = batches[-1]
            else:
                batch = _Batch(time.monotonic())
                batches.append(batch)
            batch.items.append(pending)
            # Wake the writer if it waits for a first arrival, or lingers and the head batch is full enough.
            first_arrival = len(batches) == 1 and len(batch.items) == 1
            enough = self._linger_target > 0 and (len(batches) > 1 or len(batch.items) >= self._linger_target)
            if first_arrival or enough:
                self._cond.notify()
        if pending.done.acquire(timeout=timeout):
            pending.pass_on()
        else:
            with self._cond:
                if not batch.taken:
                    pending.cancelled = pending.abandoned = True  # the chain passes over it
                    raise StorageError("could not append to the audit log: timed out before the commit began")
            if not pending.give_up():
                raise StorageError("could not append to the audit log: timed out waiting for the commit")
        if batch.error is not None:
            raise StorageError("could not append to the audit log: the commit failed") from batch.error
        assert pending.index is not None
        return pending.index

    def _next_batch(self) -> _Batch | None:
        """Wait for work; linger (see the class docstring); take the oldest batch. None: closed and drained."""
        ready_at = time.monotonic()
        with self._cond:
            while not self._batches:
                if self._closed:
                    return None
                self._cond.wait()
            head = self._batches[0]
            target = min(self._expected, self._max_batch)
            if self._linger > 0 and len(self._batches) == 1 and len(head.items) < target:
                deadline = max(head.opened_at, ready_at) + self._linger
                self._linger_target = target
                try:
                    while not self._closed and len(self._batches) == 1 and len(head.items) < target:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                finally:
                    self._linger_target = 0
            self._batches.popleft()
            head.taken = True
            return head

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            live = [pending for pending in batch.items if not pending.cancelled]
            try:
                indices = self._log.append_batch([pending.request for pending in live]) if live else []
            except StorageError as e:
                self._health.failed(e)  # logged once an outage, not once a batch
                batch.error = e
            except Exception as e:  # a bug must still fail the callers closed, not strand them
                _log.exception("audit log batch of %d entries failed unexpectedly", len(live))
                batch.error = e
            else:
                self._health.answered()
                for pending, index in zip(live, indices, strict=True):
                    pending.index = index
                with self._cond:
                    self._batches_committed += 1
                    self._entries_committed += len(live)
                    # The callers just served, plus those who queued meanwhile: with closed-loop
                    # callers (an RPC thread logs, replies, takes the next call) that is how many will
                    # be back for the next batch. One caller alone gives 1: no lingering at all.
                    self._expected = len(live) + sum(len(queued.items) for queued in self._batches)
            items = batch.items
            for before, after in itertools.pairwise(items):
                before.next = after
            items[0].wake()  # each caller wakes the next (see _Pending)

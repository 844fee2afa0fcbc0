"""Transaction helpers shared by every repository."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import sqlite3
import threading
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import psycopg
from sqlalchemy import Connection, Dialect, Engine, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import Executable

from veilgate.errors import StorageError, VeilgateError

from .db import SINGLE_STATEMENT_READ, WRITE_TRANSACTION, storage_error
from .models import UTCDateTime

__all__ = [
    "KEPT_READ_CONNECTIONS",
    "KEPT_WRITE_CONNECTIONS",
    "DriverSql",
    "StateChange",
    "bind_instant",
    "close_kept_connections",
    "driver_cursor",
    "insert_unique",
    "kept_write_connection",
    "read_driver_rows",
    "read_rows",
    "sqlite_writer_lock",
    "storage_errors",
    "write_connection",
    "write_session",
]

_Row = TypeVar("_Row", bound=DeclarativeBase)
_Out = TypeVar("_Out")


class StateChange(Protocol):
    """A change a call makes to the gateway's state (spending a request token or a consent use),
    made inside a write transaction that the caller owns.

    ``apply`` either writes and returns, or refuses by raising a
    :class:`~veilgate.errors.VeilgateError` and leaves the transaction as it found it (nothing
    written, or what it wrote undone in the same transaction): so one refused change can share a
    transaction with others (the audit log's group commit).
    """

    def apply(self, connection: Connection) -> None: ...


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Wrap SQLAlchemy and driver failures (the drivers' own, from :class:`DriverSql`); the message
    names the action only, never values."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, psycopg.Error) as e:
        raise storage_error(action, e) from e


class SqliteWriterLock:
    """SQLite has one writer at a time; writers queue here rather than on SQLite's busy handler,
    which sleeps and backs off (up to tens of milliseconds) instead of handing the lock over: under
    load that turned a 1 ms commit into a 100 ms wait.

    Threads of this process queue on a :class:`threading.Lock`; processes on the same database file
    (``veilgate serve --processes``, the admin commands) queue on an exclusive ``flock`` of a file
    beside it, ``<database>.writer-lock``, which the kernel hands straight to the next waiter. Both
    waits release the GIL. The lock is held from before ``BEGIN IMMEDIATE`` until after the commit or
    rollback. A process that dies holding it releases it with its descriptors. A writer that does not
    take it (an older gateway, the ``sqlite3`` shell) still meets the busy handler, as before.

    Holding the lock, a writer also checks that the database file is still the one it first wrote
    to (:meth:`_check_same_file`): one ``stat`` per transaction. A database file removed while the
    gateway serves (a data directory deleted by mistake) stays open and writable, so without the
    check every call would be acknowledged as durable into a file that no longer exists."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._database: str | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file first written to
        if database and database != ":memory:" and not database.startswith("file:"):
            self._database = database
            path = f"{database}.writer-lock"
            try:
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise StorageError(f"cannot open the SQLite writer lock {path}: {e.strerror}") from e
            weakref.finalize(self, os.close, self._fd)

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                self._check_same_file()
            except BaseException:
                with contextlib.suppress(OSError):
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._threads.release()
                raise

    def _check_same_file(self) -> None:
        """Refuse to write when the database file was removed or replaced since the first write."""
        assert self._database is not None
        try:
            found = os.stat(self._database)
        except FileNotFoundError:
            identity = None
        else:
            identity = (found.st_dev, found.st_ino)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            what = "removed" if identity is None else "replaced"
            raise StorageError(
                "could not write: the database file was removed or replaced while in use",
                cause=f"{self._database} was {what} while in use; put it back, or restart on the right file",
            )

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, SqliteWriterLock] = weakref.WeakKeyDictionary()
_SQLITE_WRITERS_GUARD = threading.Lock()


def sqlite_writer_lock(sessions: sessionmaker[Session]) -> SqliteWriterLock | None:
    """The writer lock of the session factory's SQLite database (see :class:`SqliteWriterLock`);
    None on PostgreSQL, where row locks do the work."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, Engine) or engine.dialect.name != "sqlite":
        return None
    with _SQLITE_WRITERS_GUARD:
        lock = _SQLITE_WRITERS.get(engine)
        if lock is None:
            lock = _SQLITE_WRITERS[engine] = SqliteWriterLock(engine.url.database)
        return lock


@contextmanager
def write_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session in a write transaction, committed on success and rolled back on any exception."""
    lock = sqlite_writer_lock(sessions)
    with lock if lock is not None else contextlib.nullcontext(), sessions.begin() as session:
        # Procure the connection now, so the transaction starts as a writer (BEGIN IMMEDIATE on SQLite).
        session.connection(execution_options={WRITE_TRANSACTION: True})
        yield session


@contextmanager
def write_connection(sessions: sessionmaker[Session]) -> Iterator[Connection]:
    """A plain connection in a write transaction (committed on success, rolled back on error), for
    hot-path writes that use no ORM object: same locking and ``BEGIN IMMEDIATE`` as
    :func:`write_session`, without the session's unit-of-work bookkeeping (measured: about an eighth
    of the gateway's CPU under load went to it)."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory is not bound to an engine")
    lock = sqlite_writer_lock(sessions)
    with (
        lock if lock is not None else contextlib.nullcontext(),
        bind.connect().execution_options(**{WRITE_TRANSACTION: True}) as connection,
        connection.begin(),
    ):
        yield connection


class _KeptConnections:
    """One open connection per thread, kept for the thread's life, for one kind of use.

    Checking a connection out of the pool and back in costs more than a short statement: measured,
    a primary-key read took 51 µs pooled against 26 µs on a kept connection on SQLite, and 580 µs
    against 180 µs on PostgreSQL, where every checkout pings the server and every checkin rolls
    back; the log writer's single-entry batches went from about 1,450 to 1,850 per second.

    * ``reads`` (:func:`read_rows`): autocommit on PostgreSQL, no ``BEGIN`` on SQLite, so a kept
      connection never holds a snapshot between reads.
    * ``writes`` (:func:`kept_write_connection`, SQLite only): each use is one write transaction.

    At most ``limit`` connections are kept per engine and use (those of finished threads are closed
    first); past that, callers use the pool as before. A connection that failed is closed, and the
    thread's next use opens a fresh one.
    """

    def __init__(self, engine: Engine, *, limit: int, options: dict[str, Any]) -> None:
        self._engine = engine
        self._limit = limit
        self._options = options
        self._lock = threading.Lock()
        self._kept: dict[int, Connection] = {}
        self._closed = False

    def kept(self) -> Connection | None:
        """This thread's kept connection, opened on first use; None when no more may be kept."""
        ident = threading.get_ident()
        connection = self._kept.get(ident)
        if connection is not None and not connection.closed and not connection.invalidated:
            return connection
        with self._lock:
            self._discard(ident)
            if self._closed:
                return None
            if len(self._kept) >= self._limit:
                alive = {thread.ident for thread in threading.enumerate()}
                for gone in [ident for ident in self._kept if ident not in alive]:
                    self._discard(gone)
                if len(self._kept) >= self._limit:
                    return None
            connection = self._engine.connect().execution_options(**self._options)
            self._kept[ident] = connection
            return connection

    def forget(self) -> None:
        """Close this thread's kept connection (after an error, so the next use opens a fresh one)."""
        with self._lock:
            self._discard(threading.get_ident())

    def _discard(self, ident: int) -> None:
        connection = self._kept.pop(ident, None)
        if connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for ident in list(self._kept):
                self._discard(ident)


_KEPT: weakref.WeakKeyDictionary[Engine, dict[str, _KeptConnections]] = weakref.WeakKeyDictionary()
_KEPT_GUARD = threading.Lock()
KEPT_READ_CONNECTIONS = 16
KEPT_WRITE_CONNECTIONS = 2
"""Per engine; :func:`~veilgate_server.storage.db.create_engine_for` sizes the pool for them."""


def _kept(engine: Engine, use: str) -> _KeptConnections:
    uses = _KEPT.get(engine)
    if uses is None or use not in uses:
        with _KEPT_GUARD:
            uses = _KEPT.setdefault(engine, {})
            if use not in uses:
                if use == "reads":
                    options: dict[str, Any] = {SINGLE_STATEMENT_READ: True}
                    if engine.dialect.name == "postgresql":
                        options["isolation_level"] = "AUTOCOMMIT"
                    uses[use] = _KeptConnections(engine, limit=KEPT_READ_CONNECTIONS, options=options)
                else:
                    uses[use] = _KeptConnections(
                        engine, limit=KEPT_WRITE_CONNECTIONS, options={WRITE_TRANSACTION: True}
                    )
    return uses[use]


def close_kept_connections(engine: Engine) -> None:
    """Close the connections kept for ``engine`` by :func:`read_rows` and
    :func:`kept_write_connection` (before disposing of the engine)."""
    with _KEPT_GUARD:
        uses = _KEPT.pop(engine, {})
    for kept in uses.values():
        kept.close()


@contextmanager
def kept_write_connection(sessions: sessionmaker[Session]) -> Iterator[Connection]:
    """:func:`write_connection` on a connection the calling thread keeps: for a thread that writes
    back to back (the audit log's writer). Same locking, ``BEGIN IMMEDIATE``, commit and rollback.

    SQLite only: a server database can go away between two batches (a restart, a failover), and
    a pooled connection is pinged at checkout and replaced before it fails a batch, where a kept one
    would fail it. A write cannot simply be tried again once it may have committed."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory is not bound to an engine")
    writers = _kept(bind, "writes")
    connection = writers.kept() if bind.dialect.name == "sqlite" else None
    if connection is None:
        with write_connection(sessions) as pooled:
            yield pooled
        return
    lock = sqlite_writer_lock(sessions)
    try:
        with lock if lock is not None else contextlib.nullcontext(), connection.begin():
            yield connection
    except (SQLAlchemyError, sqlite3.Error, psycopg.Error):
        writers.forget()
        raise


@contextmanager
def driver_cursor(connection: Connection) -> Iterator[Any]:
    """The driver's own cursor on ``connection``, closed afterwards: for statements that never
    change, run many times a second inside a transaction begun through SQLAlchemy (see
    :class:`DriverSql` for what that saves). Driver errors are raised as they are."""
    driver = connection.connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


def read_rows(
    sessions: sessionmaker[Session], statement: Executable, params: dict[str, Any] | None = None
) -> Sequence[Row[*tuple[Any, ...]]]:
    """Run one read statement and return its rows.

    For reads through SQLAlchemy Core that need no ORM session (the reads every call makes go
    further, to the driver's cursor: :func:`read_driver_rows`). Measured on SQLite, a primary-key
    lookup costs about 60 µs on a pooled plain connection against about 220 µs through
    ``Session.get`` (identity map, unit of work and session transaction bookkeeping that a
    one-statement read does not need), and about 26 µs on the thread's kept connection
    (:class:`_KeptConnections`). Pass a statement built once with ``bindparam`` placeholders and the
    values in ``params``: building the statement anew on every call costs as much again in
    cache-key computation."""
    values = params or {}

    def run(connection: Connection) -> Sequence[Row[*tuple[Any, ...]]]:
        rows = connection.execute(statement, values).all()
        connection.rollback()  # ends the autobegun transaction; no BEGIN was sent (see db.py)
        return rows

    return _on_kept_reader(sessions, run)


# What says a kept read connection may have been lost (a restart, a failover): SQLAlchemy marks it
# invalidated; the drivers' own cursors (DriverSql) raise their operational or interface errors.
_DRIVER_CONNECTION_ERRORS = (
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def _on_kept_reader(sessions: sessionmaker[Session], run: Callable[[Connection], _Out]) -> _Out:
    """``run`` a read on this thread's kept read connection (or a pooled one past the limit). When
    the server dropped the kept connection, it is replaced and the read asked again, once, as the
    pool's ping would have done: a read can be."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory is not bound to an engine")
    readers = _kept(bind, "reads")
    try:
        return _once_on_kept_reader(readers, bind, run)
    except DBAPIError as e:
        if not e.connection_invalidated:
            raise
    except _DRIVER_CONNECTION_ERRORS:
        pass
    return _once_on_kept_reader(readers, bind, run)


def _once_on_kept_reader(readers: _KeptConnections, bind: Engine, run: Callable[[Connection], _Out]) -> _Out:
    connection = readers.kept()
    if connection is None:
        with bind.connect().execution_options(**{SINGLE_STATEMENT_READ: True}) as pooled:
            return run(pooled)
    try:
        return run(connection)
    except BaseException:
        readers.forget()  # a fresh connection next time
        raise


_PLACEHOLDER = re.compile(r"(?<![:\w]):(\w+)")


class DriverSql:
    """A statement every call makes, written in plain SQL and run on the driver's own cursor.

    SQLAlchemy's statement execution costs 40-90 µs per statement (execution context, parameter
    processing, result metadata, row objects) where the statement itself takes 5-10 µs on SQLite:
    measured, a consent by its id took 95 µs through Core against 7 µs on the sqlite3 cursor, and
    in the server, under load, the difference is two to three times that. Only the statements on
    every call's path are written out like this; everything else keeps using SQLAlchemy.

    ``sql`` uses ``:name`` placeholders (sqlite3's named style), rewritten to ``%(name)s`` for
    psycopg: write SQL that both backends read alike, with no literal ``%`` (psycopg would read it
    as a placeholder) and no ``:word`` outside a placeholder. Parameters go to the driver as
    they are: pass instants through :func:`bind_instant`. Rows (of a SELECT, or of RETURNING) come
    back as named tuples of the driver's values: instants and dates are text on SQLite (read them
    with ``repositories._utc``), booleans are 0/1 there, binary columns are ``bytes`` on both.
    """

    __slots__ = ("_row", "_sql")

    def __init__(
        self, name: str, columns: Sequence[str], sql: str, *, backends: Sequence[str] = ("sqlite", "postgresql")
    ) -> None:
        """``backends`` narrows the statement to the backends that read ``sql`` (the default is both);
        on another it raises StorageError rather than run."""
        self._row: Callable[[Sequence[Any]], Any] = namedtuple(name, columns)._make  # type: ignore[attr-defined]
        written = {"sqlite": sql, "postgresql": _PLACEHOLDER.sub(r"%(\1)s", sql)}
        self._sql = {backend: written[backend] for backend in backends}

    @classmethod
    def select(cls, name: str, table: str, columns: Sequence[str], where: str) -> DriverSql:
        """``SELECT columns FROM table WHERE where``: names and conditions from the code, never values."""
        return cls(name, columns, f"SELECT {', '.join(columns)} FROM {table} WHERE {where}")  # noqa: S608

    def run(self, connection: Connection, params: dict[str, Any]) -> list[Any]:
        """Run on ``connection``'s driver connection, outside SQLAlchemy's bookkeeping: on a
        connection that needs none (the autocommit reads of :func:`read_driver_rows`), or inside a
        transaction the caller began on it. Driver errors are raised as they are (see
        :func:`storage_errors`)."""
        sql = self._sql.get(connection.dialect.name)
        if sql is None:
            raise StorageError(f"this statement is not implemented for the {connection.dialect.name} backend")
        with driver_cursor(connection) as cursor:
            cursor.execute(sql, params)
            if cursor.description is None:  # no rows to return (psycopg would refuse to fetch)
                return []
            return [self._row(values) for values in cursor.fetchall()]


_INSTANT = UTCDateTime()


def bind_instant(dialect: Dialect, value: dt.datetime) -> Any:
    """An aware instant as the driver takes it for a ``UTCDateTime`` column, stored exactly as
    SQLAlchemy stores it: the column type's own conversion (naive instants refused), then on SQLite
    the text the sqlite3 module's default adapter would write (so that text comparisons in SQL
    order instants)."""
    bound = _INSTANT.process_bind_param(value, dialect)
    return bound.isoformat(" ") if dialect.name == "sqlite" and bound is not None else bound


def read_driver_rows(sessions: sessionmaker[Session], read: DriverSql, params: dict[str, Any]) -> list[Any]:
    """:func:`read_rows` for a :class:`DriverSql`: the same kept connections and the same one retry
    after a lost server connection. Wrap it in :func:`storage_errors`."""
    return _on_kept_reader(sessions, lambda connection: read.run(connection, params))


def insert_unique(
    sessions: sessionmaker[Session],
    row: _Row,
    convert: Callable[[_Row], _Out],
    *,
    action: str,
    exists: VeilgateError,
) -> _Out:
    """Insert ``row`` and return ``convert(row)``; raise ``exists`` if its key is taken.

    Callers check every input first, so the only constraint left to violate is the primary key: a
    concurrent or earlier insert of the same key won, and the database is the arbiter of that race."""
    with storage_errors(action):
        try:
            with write_session(sessions) as session:
                session.add(row)
                session.flush()
                return convert(row)
        except IntegrityError as e:
            raise exists from e

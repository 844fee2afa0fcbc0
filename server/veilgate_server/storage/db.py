"""Engines and schema management for the gateway's store.

Two backends are supported and behave the same through the repositories:

* **SQLite** (the embedded default): one file in the data directory, in WAL mode so that readers
  never block the writer, ``synchronous=FULL`` so that a committed ledger row survives a power cut,
  and ``foreign_keys=ON``. The ``sqlite3`` driver's own transaction handling is switched off and
  SQLAlchemy emits ``BEGIN`` itself, so that every statement, reads and DDL included, runs inside a
  real transaction. A transaction opened with the ``WRITE_TRANSACTION`` execution option starts with
  ``BEGIN IMMEDIATE``: it takes the write lock up front, so two writers queue on ``busy_timeout``
  instead of one of them failing with "database is locked" when it upgrades a read lock mid-way.
  Only an engine's first connection may create the file; later ones open it or fail, so that a file
  removed while the gateway serves is an error, not a new, empty database in its place.
* **PostgreSQL** (production, and the way to run several gateway replicas): psycopg 3, with
  ``pool_pre_ping`` so that a connection dropped by a failover is replaced rather than handed out,
  and a 10 s connect timeout unless the URL sets ``connect_timeout``.

The schema is owned by Alembic (``migrations/``). The gateway never creates tables on its own:
:func:`upgrade_schema` is the only path (``veilgate migrate``, or ``Store.open(migrate=True)``), and
:func:`check_schema` refuses to serve from a database at another revision.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from veilgate.errors import ConfigurationError, StorageError
from veilgate_server.crypto.records import RecordsKeySource

__all__ = [
    "SINGLE_STATEMENT_READ",
    "WRITE_TRANSACTION",
    "check_schema",
    "create_engine_for",
    "sqlite_url",
    "upgrade_schema",
]

#: Execution option that marks a transaction as a writer. On SQLite it makes the transaction begin
#: with ``BEGIN IMMEDIATE``; on PostgreSQL it has no effect (row locks do the work there).
WRITE_TRANSACTION: Final = "veilgate_write_transaction"
SINGLE_STATEMENT_READ: Final = "veilgate_single_statement_read"

_MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"

# Any constant works; it only has to be the same for every gateway replica.
_PG_MIGRATION_LOCK_KEY: Final = 0x7665696C67617465  # b"veilgate"

_PG_CONNECT_TIMEOUT: Final = 10  # seconds

_SQLITE_PRAGMAS: Final = (
    # busy_timeout first: the journal_mode switch may itself have to wait for another connection.
    "PRAGMA busy_timeout=5000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
)

# Room for the connections threads keep (storage._session: 16 for reads, 2 for SQLite's log writer) on
# top of the default pool of 5 plus 10 overflow.
_POOL: Final = {"pool_size": 23, "max_overflow": 10}

_SUPPORTED: Final = "use sqlite:///<path> or postgresql://user@host:port/database"


def sqlite_url(data_dir: Path) -> str:
    """The URL of the embedded store inside ``data_dir``."""
    return f"sqlite:///{data_dir / 'veilgate.db'}"


def create_engine_for(url: str) -> Engine:
    """An engine for ``url`` configured for the gateway (see the module docstring).

    ``postgresql://`` is read as ``postgresql+psycopg://``. Any other scheme or driver raises
    :class:`~veilgate.errors.ConfigurationError`; the message never repeats the password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigurationError(f"database URL is not a valid URL; {_SUPPORTED}") from e
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            # Each connection would open a database of its own, and all of it is lost at exit.
            raise ConfigurationError(f"an in-memory SQLite database cannot hold the gateway's state; {_SUPPORTED}")
        engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), hide_parameters=True, **_POOL)
        _configure_sqlite(engine, parsed.database)
        return engine
    if backend == "postgresql" and driver in ("", "psycopg"):
        # A server that does not answer must fail the call, not hang it: bound the connect unless
        # the URL says otherwise (libpq's own default is to wait forever).
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": _PG_CONNECT_TIMEOUT}
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            pool_pre_ping=True,
            hide_parameters=True,
            **_POOL,
            connect_args=connect_args,
        )
    raise ConfigurationError(f"unsupported database URL scheme {parsed.drivername!r}; {_SUPPORTED}")


def _configure_sqlite(engine: Engine, database: str) -> None:
    created = [Path(database).exists()]

    @event.listens_for(engine, "do_connect")
    def _open_existing(dialect: Any, record: ConnectionPoolEntry, cargs: list[Any], cparams: dict[str, Any]) -> None:
        # Once the file exists, a connection opens that file or fails: SQLite would otherwise make a
        # new, empty database where the file was removed (a data directory deleted while serving),
        # and the calls its connections served would fail on missing tables, or worse.
        if not created[0]:
            created[0] = True  # this first connection makes the file
            return
        if not database.startswith("file:"):
            cargs[:] = [f"file:{quote(database)}?mode=rw"]
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
        # Stop sqlite3 from issuing BEGIN (and from committing before DDL); _on_begin does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # On the driver's connection: SQLAlchemy's statement execution cost several times the
        # BEGIN itself, once per transaction (the log writer's included).
        options = conn.get_execution_options()
        driver = conn.connection.driver_connection
        assert driver is not None
        if options.get(WRITE_TRANSACTION, False):
            driver.execute("BEGIN IMMEDIATE")
        elif not options.get(SINGLE_STATEMENT_READ, False):
            driver.execute("BEGIN")
        # A single-statement read needs no transaction of its own: the statement is atomic, and in
        # WAL mode it reads one consistent snapshot. Skipping BEGIN saves a round trip per read.


def _alembic_config(connection: Connection, records_key: RecordsKeySource | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["records_key"] = records_key  # revision 0008 seals stored records with it
    return config


def _head_revision() -> str | None:
    return ScriptDirectory(str(_MIGRATIONS_DIR)).get_current_head()


def storage_error(action: str, error: Exception) -> StorageError:
    """The StorageError for a driver or SQLAlchemy failure during ``action``: its message names the
    action and the kind of failure, never SQL or values; its ``cause`` adds the driver's own words
    when the failure is operational (a file that cannot be opened, a server that does not answer),
    whose text holds no row values, unlike a constraint's or a conversion's."""
    driver = error.orig if isinstance(error, DBAPIError) else error
    cause = None
    if isinstance(driver, sqlite3.OperationalError | psycopg.OperationalError) or type(driver) is sqlite3.DatabaseError:
        cause = str(driver).strip().splitlines()[0] if str(driver).strip() else None
    return StorageError(f"could not {action}: the database reported {type(error).__name__}", cause=cause)


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    """Turn driver and SQLAlchemy failures into StorageError without echoing SQL or values."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, psycopg.Error) as e:  # BEGIN goes to the driver itself
        raise storage_error(action, e) from e


def upgrade_schema(engine: Engine, *, records_key: RecordsKeySource | None = None) -> None:
    """Bring the database to the newest schema revision; a no-op when it is already there.
    ``records_key`` (or a function that gives it): needed only to seal records a database held in
    the clear before revision 0008, and asked for only then.

    Runs in one transaction. Concurrent callers are serialised (SQLite: ``BEGIN IMMEDIATE``;
    PostgreSQL: a transaction-scoped advisory lock), so replicas may all start with ``migrate=True``.
    """
    with (
        _wrapped("migrate the database schema"),
        engine.connect().execution_options(**{WRITE_TRANSACTION: True}) as connection,
        connection.begin(),
    ):
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        command.upgrade(_alembic_config(connection, records_key), "head")


def check_schema(engine: Engine) -> None:
    """Raise :class:`~veilgate.errors.StorageError` unless the schema is at the newest revision."""
    expected = _head_revision()
    with _wrapped("read the database schema revision"), engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != expected:
        raise StorageError(
            f"database schema is at revision {current or '<none>'}, expected {expected}; run `veilgate migrate`"
        )

"""The storage contract: every test runs on SQLite and on PostgreSQL (see tests/conftest.py).

Whatever backend an operator picks, the gateway above must see the same behaviour, including under
concurrency: a jti is consumed once, a citizen is enrolled once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url

from veilgate.errors import (
    CitizenAlreadyEnrolled,
    CitizenNotEnrolled,
    ConfigurationError,
    StorageError,
    TokenReplayed,
    VeilgateError,
)
from veilgate_server.crypto.records import RecordsKey
from veilgate_server.storage import (
    AppendRequest,
    Store,
    StoredRecord,
    check_schema,
    create_engine_for,
    db,
    repositories,
    sqlite_url,
    upgrade_schema,
)
from veilgate_server.storage._session import KEPT_READ_CONNECTIONS, DriverSql, storage_errors
from veilgate_server.storage.models import UsedRequestToken

T0 = dt.datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)
CST = dt.timezone(dt.timedelta(hours=8))  # China Standard Time, the zone the operators run in
THREADS = 8


def _key(tag: int) -> bytes:
    return bytes([tag]) * 32


def _record(citizen_id: str, item_id: str, value: str = '{"v":1}', *, day: int = 1) -> StoredRecord:
    return StoredRecord(
        citizen_id=citizen_id,
        item_id=item_id,
        department="dept.housing",
        as_of=dt.date(2025, 1, day),
        value_json=value,
    )


def _race(action: Callable[[], object]) -> list[BaseException | None]:
    """Run ``action`` on THREADS threads released together; the outcome of each (None = success)."""
    barrier = threading.Barrier(THREADS)

    def attempt() -> BaseException | None:
        barrier.wait(timeout=30)
        try:
            action()
        except VeilgateError as e:
            return e
        return None

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(attempt) for _ in range(THREADS)]
        return [f.result(timeout=60) for f in futures]


# --- citizens -------------------------------------------------------------------------------------


def test_enroll_then_keys_of(store: Store) -> None:
    enrolled = store.citizens.enroll("c-1", signing_key=_key(1), encryption_key=_key(2), at=T0)

    assert enrolled.citizen_id == "c-1"
    assert enrolled.key_version == 1
    assert store.citizens.keys_of("c-1") == enrolled
    assert (enrolled.signing_key, enrolled.encryption_key) == (_key(1), _key(2))
    assert store.citizens.count() == 1


def test_enroll_twice_is_refused_and_keeps_the_first_keys(store: Store) -> None:
    store.citizens.enroll("c-1", signing_key=_key(1), encryption_key=_key(2), at=T0)

    with pytest.raises(CitizenAlreadyEnrolled):
        store.citizens.enroll("c-1", signing_key=_key(3), encryption_key=_key(4), at=T0)

    assert store.citizens.keys_of("c-1").signing_key == _key(1)
    assert store.citizens.count() == 1


def test_keys_of_unknown_citizen(store: Store) -> None:
    with pytest.raises(CitizenNotEnrolled):
        store.citizens.keys_of("nobody")


def test_rotate_increments_version_and_replaces_keys(store: Store) -> None:
    store.citizens.enroll("c-1", signing_key=_key(1), encryption_key=_key(2), at=T0)
    later = T0 + dt.timedelta(days=30)

    first = store.citizens.rotate_keys("c-1", signing_key=_key(3), encryption_key=_key(4), at=later)
    second = store.citizens.rotate_keys(
        "c-1", signing_key=_key(5), encryption_key=_key(6), at=later + dt.timedelta(days=1)
    )

    assert (first.key_version, second.key_version) == (2, 3)
    current = store.citizens.keys_of("c-1")
    assert current == second
    assert (current.signing_key, current.encryption_key) == (_key(5), _key(6))
    assert current.keys_updated_at == later + dt.timedelta(days=1)
    assert {current.signing_key, current.encryption_key}.isdisjoint({_key(1), _key(2), _key(3), _key(4)})


def test_rotate_unknown_citizen(store: Store) -> None:
    with pytest.raises(CitizenNotEnrolled):
        store.citizens.rotate_keys("nobody", signing_key=_key(3), encryption_key=_key(4), at=T0)
    assert store.citizens.count() == 0


def test_datetimes_come_back_timezone_aware_utc(store: Store) -> None:
    at_local = dt.datetime(2025, 3, 1, 17, 30, tzinfo=CST)  # 09:30 UTC

    enrolled = store.citizens.enroll("c-1", signing_key=_key(1), encryption_key=_key(2), at=at_local)
    read = store.citizens.keys_of("c-1")
    rotated = store.citizens.rotate_keys("c-1", signing_key=_key(3), encryption_key=_key(4), at=at_local)

    for keys in (enrolled, read, rotated):
        assert keys.keys_updated_at.tzinfo is not None
        assert keys.keys_updated_at.utcoffset() == dt.timedelta(0)
        assert keys.keys_updated_at == at_local
        assert keys.keys_updated_at.hour == 9


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.citizens.enroll("c-1", signing_key=_key(1), encryption_key=_key(2), at=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.requests.consume("c-1", "j", expires_at=T0.replace(tzinfo=None), now=T0)


# --- records --------------------------------------------------------------------------------------


def test_more_reading_threads_than_kept_connections_all_get_answers(store: Store) -> None:
    """Each thread keeps a read connection, up to a limit per engine; past it, reads use the pool,
    and connections of finished threads are reclaimed. Every reader gets its answer either way."""
    store.records.put_many([_record("c-1", "tax.annual_income", '{"amount":1}')])
    barrier = threading.Barrier(KEPT_READ_CONNECTIONS + 8)
    answers: list[int] = []
    lock = threading.Lock()

    def read() -> None:
        barrier.wait(timeout=30)  # all alive at once: more threads than connections may be kept
        for _ in range(3):
            found = len(store.records.for_citizen("c-1"))
            with lock:
                answers.append(found)

    for _ in range(2):  # the second wave finds the first wave's connections to reclaim
        threads = [threading.Thread(target=read) for _ in range(barrier.parties)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert answers == [1] * (2 * 3 * barrier.parties)


def _server_of(store: Store) -> dict[str, Any]:
    url = store.engine.url
    return {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database, "autocommit": True}


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)  # only a server drops connections
def test_reads_and_appends_survive_a_lost_server_connection(store: Store) -> None:
    """A PostgreSQL restart or failover drops every connection. A thread's kept read connection
    is then replaced and the read asked again, once; the log writer's connection comes from the
    pool, which pings it first. No call fails for a connection lost while idle."""
    store.records.put_many([_record("c-1", "tax.annual_income", '{"amount":1}')])
    store.log.append_batch([AppendRequest(b'{"call":0}')])
    key = store.log.pseudonym_key("c-1", create=True)
    assert len(store.records.for_citizen("c-1")) == 1  # this thread now keeps a read connection

    # Drop every idle connection to the test database, as a server restart would: the store's
    # kept and pooled ones among them (pooled connections of other stores recover the same way).
    def restart() -> None:
        with psycopg.connect(**_server_of(store)) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND datname = current_database() AND usename = current_user AND state = 'idle'"
            )

    restart()
    assert len(store.records.for_citizen("c-1")) == 1  # a read through SQLAlchemy meets it first
    restart()
    assert store.log.pseudonym_key("c-1", create=False) == key  # a read on the driver's cursor
    assert store.log.append_batch([AppendRequest(b'{"call":1}')]) == [1]


def test_put_many_and_for_citizen(store: Store) -> None:
    written = store.records.put_many(
        [
            _record("c-1", "tax.annual_income", '{"amount":1}'),
            _record("c-1", "housing_fund.balance", '{"amount":2}'),
            _record("c-1", "vehicle.count", "3"),
            _record("c-2", "tax.annual_income", '{"amount":9}'),
        ]
    )

    assert written == 4
    assert store.records.count() == 4
    everything = store.records.for_citizen("c-1")
    assert [r.item_id for r in everything] == ["housing_fund.balance", "tax.annual_income", "vehicle.count"]
    assert everything[1] == _record("c-1", "tax.annual_income", '{"amount":1}')
    assert all(r.citizen_id == "c-1" for r in everything)


def test_a_full_read_returns_exactly_what_a_listed_read_returns(store: Store) -> None:
    """A full read takes another route (SQLite: one joined text instead of a row per record; a
    delivery's read on PostgreSQL: the driver's rows): it must give the same records, byte for
    byte, in the same order, and only the citizen's own."""
    values = ['"quote \\" and backslash \\\\"', '"济南 😀"', '{"a":[1,{"b":null}],"c":true}', "-12", "[]"]
    store.records.put_many([_record("c-1", f"item.{n}", value) for n, value in enumerate(values)])
    store.records.put_many([_record("c-2", "item.0", '"someone else"'), _record("c-2", "item.9", "9")])
    listed = store.records.for_citizen("c-1", [f"item.{n}" for n in range(len(values))])
    assert store.records.for_citizen("c-1") == listed
    assert [r.value_json for r in listed] == values
    as_delivered = {r.item_id: (r.as_of.isoformat(), r.value_json) for r in listed}
    assert store.records.for_delivery("c-1") == as_delivered
    assert store.records.for_delivery("c-1", [r.item_id for r in listed]) == as_delivered


@pytest.mark.parametrize("character", ["\x00", "\x1e", "\x1f"])
def test_any_character_in_a_value_reads_back_as_stored(store: Store, character: str) -> None:
    """A value is sealed, and SQLite's joined read carries the hex of the sealed bytes: no character
    of a value, control characters included, can be misread as a separator."""
    value = f'"{character}"'
    store.records.put_many([_record("c-1", "a", '"fine"'), _record("c-1", "b", value), _record("c-1", "c", "1")])
    assert [r.value_json for r in store.records.for_citizen("c-1")] == ['"fine"', value, "1"]
    assert store.records.for_delivery("c-1")["b"] == ("2025-01-01", value)


@pytest.mark.parametrize("field", ["citizen_id", "item_id", "department"])
@pytest.mark.parametrize("character", ["\x00", "\x1f", "\n"])
def test_a_control_character_in_a_records_place_is_refused_before_anything_is_written(
    store: Store, field: str, character: str
) -> None:
    """A sealed value's associated data joins citizen, item and department with NUL, and SQLite's
    read joins fields with the unit separator: neither may be part of them."""
    bad = dataclasses.replace(_record("c-1", "b"), **{field: f"x{character}y"})
    with pytest.raises(ValueError, match=f"record's {field} must not hold a control character"):
        store.records.put_many([_record("c-1", "a"), bad])
    assert store.records.count() == 0


def test_for_citizen_subset_ignores_unknown_items_and_other_citizens(store: Store) -> None:
    store.records.put_many(
        [
            _record("c-1", "a"),
            _record("c-1", "b"),
            _record("c-1", "c"),
            _record("c-2", "d"),
        ]
    )

    assert [r.item_id for r in store.records.for_citizen("c-1", ["c", "a", "no.such.item"])] == ["a", "c"]
    assert store.records.for_citizen("c-1", ["d"]) == []
    assert store.records.for_citizen("c-1", []) == []
    assert store.records.for_citizen("c-3") == []


def test_put_many_upsert_replaces(store: Store) -> None:
    store.records.put_many([_record("c-1", "a", '"old"', day=1), _record("c-1", "b", '"keep"')])

    store.records.put_many([_record("c-1", "a", '"new"', day=20)])

    assert store.records.count() == 2
    a, b = store.records.for_citizen("c-1")
    assert (a.value_json, a.as_of) == ('"new"', dt.date(2025, 1, 20))
    assert b.value_json == '"keep"'


def test_put_many_in_batches_and_duplicates_within_a_call(store: Store) -> None:
    records = [_record(f"c-{n % 7}", f"item.{n}") for n in range(23)]
    records.append(_record("c-0", "item.0", '"last wins"'))

    assert store.records.put_many(records, batch_size=5) == 24
    assert store.records.count() == 23
    (item0,) = store.records.for_citizen("c-0", ["item.0"])
    assert item0.value_json == '"last wins"'
    assert store.records.citizen_ids(limit=3) == ["c-0", "c-1", "c-2"]
    assert store.records.citizen_ids(limit=100) == [f"c-{n}" for n in range(7)]


def test_records_do_not_need_an_enrolled_citizen(store: Store) -> None:
    store.records.put_many([_record("not-yet-enrolled", "a")])
    assert store.citizens.count() == 0
    assert len(store.records.for_citizen("not-yet-enrolled")) == 1


# --- request ledger -------------------------------------------------------------------------------


def test_consume_once_then_replay(store: Store) -> None:
    exp = T0 + dt.timedelta(minutes=5)
    store.requests.consume("c-1", "jti-1", expires_at=exp, now=T0)

    with pytest.raises(TokenReplayed, match="already used"):
        store.requests.consume("c-1", "jti-1", expires_at=exp, now=T0 + dt.timedelta(seconds=1))


def test_same_jti_for_another_citizen_is_independent(store: Store) -> None:
    exp = T0 + dt.timedelta(minutes=5)
    store.requests.consume("c-1", "jti-1", expires_at=exp, now=T0)
    store.requests.consume("c-2", "jti-1", expires_at=exp, now=T0)

    with pytest.raises(TokenReplayed):
        store.requests.consume("c-2", "jti-1", expires_at=exp, now=T0)


def _ledger_rows(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(UsedRequestToken.citizen_id, func.count()).group_by(UsedRequestToken.citizen_id))
        return {citizen_id: count for citizen_id, count in rows}


def test_expired_rows_of_the_citizen_are_purged(store: Store) -> None:
    store.requests.consume("c-1", "old-1", expires_at=T0 + dt.timedelta(minutes=1), now=T0)
    store.requests.consume("c-1", "old-2", expires_at=T0 + dt.timedelta(minutes=2), now=T0)
    store.requests.consume("c-1", "live", expires_at=T0 + dt.timedelta(hours=1), now=T0)
    store.requests.consume("c-2", "other", expires_at=T0 + dt.timedelta(minutes=1), now=T0)
    assert _ledger_rows(store) == {"c-1": 3, "c-2": 1}

    later = T0 + dt.timedelta(minutes=10)
    store.requests.consume("c-1", "new", expires_at=later + dt.timedelta(minutes=5), now=later)

    # c-1 keeps "live" and "new"; c-2's expired row waits for c-2's own next request.
    assert _ledger_rows(store) == {"c-1": 2, "c-2": 1}
    with pytest.raises(TokenReplayed):
        store.requests.consume("c-1", "live", expires_at=T0 + dt.timedelta(hours=1), now=later)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_the_purge_reads_only_the_citizens_expired_rows(store: Store) -> None:
    """Every consume purges; it must search by (citizen, expiry), not read every token the citizen
    spent within the tokens' lifetime (a citizen's calls then slowed down with their own pace)."""
    purge = repositories._PURGE_EXPIRED_TOKENS
    with store.engine.connect() as conn:
        driver = conn.connection.driver_connection
        assert driver is not None
        plan = driver.execute(
            "EXPLAIN QUERY PLAN " + purge._sql["sqlite"], {"citizen_id": "c-1", "now": "x", "jti": "j"}
        ).fetchall()
    assert any(
        "ix_used_request_tokens_citizen_id_expires_at (citizen_id=? AND expires_at<?)" in row[-1] for row in plan
    )


def test_a_stored_jti_is_refused_even_when_expired(store: Store) -> None:
    exp = T0 + dt.timedelta(minutes=1)
    store.requests.consume("c-1", "jti-1", expires_at=exp, now=T0)

    with pytest.raises(TokenReplayed):
        store.requests.consume("c-1", "jti-1", expires_at=exp, now=T0 + dt.timedelta(hours=1))


# --- concurrency ----------------------------------------------------------------------------------


def test_concurrent_consume_of_one_jti_succeeds_exactly_once(store: Store) -> None:
    exp = T0 + dt.timedelta(minutes=5)

    outcomes = _race(lambda: store.requests.consume("c-1", "jti-race", expires_at=exp, now=T0))

    assert outcomes.count(None) == 1
    failures = [o for o in outcomes if o is not None]
    assert len(failures) == THREADS - 1
    assert all(isinstance(o, TokenReplayed) for o in failures), failures


def test_concurrent_enroll_of_one_citizen_succeeds_exactly_once(store: Store) -> None:
    outcomes = _race(lambda: store.citizens.enroll("c-race", signing_key=_key(1), encryption_key=_key(2), at=T0))

    assert outcomes.count(None) == 1
    failures = [o for o in outcomes if o is not None]
    assert all(isinstance(o, CitizenAlreadyEnrolled) for o in failures), failures
    assert store.citizens.count() == 1


def test_concurrent_consume_of_distinct_jtis_all_succeed(store: Store) -> None:
    counter = iter(range(THREADS))
    lock = threading.Lock()

    def consume_next() -> None:
        with lock:
            n = next(counter)
        store.requests.consume("c-1", f"jti-{n}", expires_at=T0 + dt.timedelta(minutes=5), now=T0)

    assert _race(consume_next) == [None] * THREADS
    assert _ledger_rows(store) == {"c-1": THREADS}


# --- schema and failures --------------------------------------------------------------------------


def test_records_survive_their_rekeying_both_ways(store: Store, db_backend: str, records_key: RecordsKey) -> None:
    """Revision 0006 rebuilds the records table keyed by (citizen, item), clustered on that key on
    SQLite: every record survives it, and its undoing, as it was."""
    store.records.put_many(
        [_record(f"c-{n % 3}", f"item.{n}", f'{{"n":{n},"text":"济南 {n}"}}') for n in range(40)]
        + [_record("c-9", "big.history", "[" + ",".join(['{"month":"2025-01-01","paid":true}'] * 200) + "]")]
    )
    before = {citizen: store.records.for_citizen(citizen) for citizen in ("c-0", "c-1", "c-2", "c-9")}
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    config.attributes["records_key"] = records_key  # revisions 0008 opens the sealed values, and seals them again
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
        assert "id" in {column["name"] for column in inspect(connection).get_columns("records")}
        command.upgrade(config, "head")
        assert inspect(connection).get_pk_constraint("records")["constrained_columns"] == ["citizen_id", "item_id"]
        if db_backend == "sqlite":
            [sql] = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'records'").scalars()
            assert sql.rstrip().endswith("WITHOUT ROWID")
    assert {citizen: store.records.for_citizen(citizen) for citizen in before} == before


def test_migration_is_idempotent(store: Store) -> None:
    store.citizens.enroll("c-1", signing_key=_key(1), encryption_key=_key(2), at=T0)

    upgrade_schema(store.engine)
    upgrade_schema(store.engine)

    check_schema(store.engine)
    assert store.citizens.keys_of("c-1").key_version == 1


def test_schema_lives_where_the_url_points(store: Store, db_backend: str) -> None:
    """On PostgreSQL the per-test schema from the URL's search_path holds every table, Alembic's too."""
    if db_backend == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    else:
        query = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY table_name"
        )
    with store.engine.connect() as conn:
        tables = list(conn.exec_driver_sql(query).scalars())
        if db_backend == "postgresql":
            assert conn.exec_driver_sql("SELECT current_schema()").scalar_one().startswith("vg_test_")

    assert tables == [
        "alembic_version",
        "citizen_log_keys",
        "citizens",
        "client_certificates",
        "consents",
        "departments",
        "evaluations",
        "institutions",
        "log_checkpoints",
        "log_entries",
        "log_head",
        "log_subjects",
        "log_subtrees",
        "record_keys",
        "records",
        "records_key_current",
        "used_request_tokens",
    ]


def test_check_schema_on_an_empty_database(database_url: str) -> None:
    with pytest.raises(StorageError, match="veilgate migrate"):
        Store.open(database_url, migrate=False)

    engine = create_engine_for(database_url)
    try:
        with pytest.raises(StorageError, match=r"revision <none>, expected \d{4}"):
            check_schema(engine)
        upgrade_schema(engine)
        check_schema(engine)
    finally:
        engine.dispose()
    Store.open(database_url, migrate=False).close()


def test_unreachable_database_raises_storage_error(db_backend: str, database_url: str, tmp_path: Path) -> None:
    if db_backend == "sqlite":
        url = sqlite_url(tmp_path / "no" / "such" / "directory")
    else:
        url = (
            make_url(database_url)
            .set(database=f"vg_missing_{secrets.token_hex(4)}")
            .render_as_string(hide_password=False)
        )

    with pytest.raises(StorageError, match=r"^could not migrate the database schema: ") as raised:
        Store.open(url)
    assert "vg_missing" not in str(raised.value)
    assert "SELECT" not in str(raised.value)


def test_storage_error_messages_carry_no_values(store: Store, database_url: str, records_key: RecordsKey) -> None:
    secret_value = '{"income": 987654321}'
    store.records.put_many([_record("c-secret", "a", secret_value)])
    store.close()  # later use checks out fresh connections, so make the database itself go away

    broken = Store(create_engine_for(database_url), records_key=records_key)
    with broken.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE records")
    try:
        with pytest.raises(StorageError) as raised:
            broken.records.put_many([_record("c-secret", "a", secret_value)])
    finally:
        broken.close()
    message = str(raised.value)
    assert "987654321" not in message
    assert "c-secret" not in message
    assert message.startswith("could not store records")


def test_unsupported_url_scheme(db_backend: str) -> None:
    with pytest.raises(ConfigurationError, match="unsupported database URL scheme 'mysql'"):
        create_engine_for("mysql://root:hunter2@localhost/veilgate")
    with pytest.raises(ConfigurationError) as raised:
        create_engine_for("postgresql+psycopg2://root:hunter2@localhost/veilgate")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # SQLite's file lock
def test_a_write_that_cannot_begin_is_a_storage_error(store: Store) -> None:
    """Write transactions begin on the driver itself (``BEGIN IMMEDIATE``). When another process
    holds SQLite's write lock past the busy timeout, the caller still gets a StorageError naming the
    action, never the driver's own exception."""
    other = sqlite3.connect(store.engine.url.database or "", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="could not append to the audit log"):
            store.log.append_batch([AppendRequest(b'{"call":0}')])
        with pytest.raises(StorageError, match="could not register the institution"):
            store.institutions.register("bank.locked", kind="bank", name="Locked", at=T0)
    finally:
        other.close()
    assert store.log.append_batch([AppendRequest(b'{"call":0}')]) == [0]  # and it recovers


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # SQLite's one writer
def test_sqlite_writers_of_several_processes_queue_on_the_writer_lock(store: Store) -> None:
    """Server processes sharing one SQLite file take turns on an exclusive ``flock`` of
    ``<database>.writer-lock`` before ``BEGIN IMMEDIATE``, so a writer waits for the holder and then
    goes straight on, rather than sleeping in SQLite's busy handler. Another open file description
    of the lock file is exactly what another process's would be."""
    fd = os.open(f"{store.engine.url.database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        appended: list[list[int]] = []
        writer = threading.Thread(target=lambda: appended.append(store.log.append_batch([AppendRequest(b"{}")])))
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()  # waiting for the other holder; alone, it commits in milliseconds
        assert appended == []
        fcntl.flock(fd, fcntl.LOCK_UN)
        writer.join(10)
        assert appended == [[0]]
        # The lock is the store's again: this process can hold it while the other waits.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # a file the store holds open
def test_no_write_is_acknowledged_into_a_database_file_that_was_removed_or_replaced(
    store: Store, tmp_path: Path
) -> None:
    """An open SQLite file stays writable after it is unlinked (a data directory deleted while the
    gateway serves): every write would be acknowledged as durable into a file that is gone. Writers
    refuse instead, with the file named for the operator, and go on once it is back."""
    database = Path(store.engine.url.database or "")
    assert store.log.append_batch([AppendRequest(b'{"call":0}')]) == [0]
    aside = tmp_path / "aside.db"
    database.rename(aside)
    for write in (
        lambda: store.log.append_batch([AppendRequest(b'{"call":1}')]),
        lambda: store.institutions.register("bank.gone", kind="bank", name="Gone", at=T0),
        store.check_writable,  # what the checkpointer's rounds ask, which otherwise only read
    ):
        with pytest.raises(StorageError, match="removed or replaced while in use") as refused:
            write()
        assert refused.value.cause is not None
        assert str(database) in refused.value.cause
        assert "was removed" in refused.value.cause
    store.engine.dispose(close=False)  # connections opened from here on
    with pytest.raises(StorageError, match="could not list institutions") as unopened:
        store.institutions.list()
    assert unopened.value.cause == "unable to open database file"
    assert not database.exists()  # not a new, empty database in the file's place
    database.write_bytes(aside.read_bytes())  # a copy is another file: still refused
    with pytest.raises(StorageError, match="removed or replaced") as replaced:
        store.log.append_batch([AppendRequest(b'{"call":1}')])
    assert "was replaced" in (replaced.value.cause or "")
    aside.replace(database)  # the very file, put back
    store.check_writable()
    assert store.log.append_batch([AppendRequest(b'{"call":1}')]) == [1]
    assert store.institutions.list() == []


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
def test_a_driver_statement_written_for_one_backend_refuses_another(store: Store) -> None:
    """A policy's inputs on PostgreSQL are read with an array parameter, which SQLite cannot read:
    that statement is narrowed to PostgreSQL, and run on SQLite it fails by name, not by syntax."""
    only_postgres = DriverSql("One", ["one"], "SELECT 1 WHERE 1 = ANY(:ones)", backends=("postgresql",))
    with store.engine.connect() as connection, pytest.raises(StorageError, match="not implemented for the sqlite"):
        only_postgres.run(connection, {"ones": [1]})


def test_a_storage_error_gives_the_operator_the_database_words_only_when_they_hold_no_values(
    store: Store, database_url: str
) -> None:
    """A constraint's text can quote the row (PostgreSQL: "Key (citizen_id)=(...) already exists"),
    so it stays out of the error; an operational failure's text is about the database, not the data,
    and is what an operator on call needs."""
    canary = "canary-" + secrets.token_hex(8)
    insert = text("INSERT INTO error_probe (v) VALUES (:v)")
    with store.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE error_probe (v VARCHAR(64) PRIMARY KEY)")
        connection.execute(insert, {"v": canary})
    with pytest.raises(StorageError) as duplicate, storage_errors("write a probe"), store.engine.begin() as connection:
        connection.execute(insert, {"v": canary})
    assert duplicate.value.cause is None
    assert canary not in duplicate.value.message
    with pytest.raises(StorageError) as missing, storage_errors("read a probe"), store.engine.begin() as connection:
        connection.exec_driver_sql("SELECT v FROM no_such_table")
    if store.engine.dialect.name == "sqlite":  # PostgreSQL's undefined table is a statement error
        assert missing.value.cause == "no such table: no_such_table"
    unreachable = (
        "sqlite:////nonexistent-dir/veilgate.db"
        if store.engine.dialect.name == "sqlite"
        else "postgresql://nobody@127.0.0.1:1/x"
    )
    with pytest.raises(StorageError) as down:
        Store.open(unreachable)
    assert down.value.cause is not None
    assert ("unable to open database file" in down.value.cause) or ("Connection refused" in down.value.cause)

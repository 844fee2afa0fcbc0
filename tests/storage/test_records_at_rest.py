"""Records at rest, on both backends: no value in the clear in the database, a value bound to its
place, the records key checked at start-up, erasure by destroying the data key, and revision 0008
sealing what an older database held in the clear."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from veilgate.errors import ConfigurationError, StorageError
from veilgate_server.admin import erase_records
from veilgate_server.crypto.records import RecordsKey, RecordsKeyError
from veilgate_server.storage import Store, StoredRecord, check_schema, db
from veilgate_server.storage._session import write_connection

T0 = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)


def _record(citizen_id: str, item_id: str, value: str, *, day: int = 1) -> StoredRecord:
    return StoredRecord(citizen_id, item_id, "dept.tax", dt.date(2026, 1, day), value)


def _every_stored_byte(store: Store) -> bytes:
    """Every value of every row of every table, as bytes (text as UTF-8)."""
    out = bytearray()
    with store.engine.connect() as connection:
        for table in ("records", "record_keys", "citizens", "log_entries"):
            for row in connection.execute(text(f"SELECT * FROM {table}")):  # noqa: S608
                for value in row:
                    out += value if isinstance(value, bytes | memoryview) else str(value).encode()
    return bytes(out)


def _sqlite_files(store: Store) -> bytes:
    database = make_url(str(store.engine.url)).database
    assert database is not None
    return b"".join(p.read_bytes() for p in Path(database).parent.glob(Path(database).name + "*"))


def test_no_value_is_stored_in_the_clear(store: Store, db_backend: str) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    store.records.put_many([_record("c-1", "taxation.note", f'"{canary}"'), _record("c-1", "taxation.n", "1")])

    assert store.records.for_citizen("c-1", ["taxation.note"])[0].value_json == f'"{canary}"'
    assert canary.encode() not in _every_stored_byte(store)
    if db_backend == "sqlite":  # the file and its write-ahead log, byte for byte
        with store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(FULL)")
        assert canary.encode() not in _sqlite_files(store)


def test_a_second_gateway_with_the_same_key_reads_the_records(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    store.records.put_many([_record("c-1", "a", '{"v":1}')])
    with Store.open(database_url, records_key=records_key) as other:
        assert other.records.for_delivery("c-1") == {"a": ("2026-01-01", '{"v":1}')}


@pytest.mark.parametrize("side", ["lower", "higher"])
def test_a_gateway_holding_another_records_key_is_refused_at_start(
    store: Store, database_url: str, records_key: RecordsKey, side: str
) -> None:
    """Whichever side of the stored key's id the other key's id falls (the check reads two ranges)."""
    store.records.put_many([_record("c-1", "a", '{"v":1}')])
    other = RecordsKey.generate()
    while (other.key_id < records_key.key_id) != (side == "lower"):
        other = RecordsKey.generate()
    with pytest.raises(ConfigurationError, match=f"holds records key {other.key_id}: copy keys/records.key"):
        Store.open(database_url, records_key=other)


def test_a_store_without_the_records_key_serves_no_record(store: Store, database_url: str) -> None:
    store.records.put_many([_record("c-1", "a", '{"v":1}')])
    with Store.open(database_url) as auditors:
        assert auditors.records.count() == 1  # counting opens nothing
        with pytest.raises(ConfigurationError, match="opened without the records key"):
            auditors.records.for_citizen("c-1")
        with pytest.raises(ConfigurationError, match="opened without the records key"):
            auditors.records.put_many([_record("c-1", "b", "2")])


@pytest.mark.parametrize(
    "tamper",
    [
        # a value moved to another item, another citizen's value moved in, a date changed
        "UPDATE records SET value_sealed = (SELECT value_sealed FROM records WHERE item_id = 'b'"
        " AND citizen_id = 'c-1') WHERE item_id = 'a' AND citizen_id = 'c-1'",
        "UPDATE records SET value_sealed = (SELECT value_sealed FROM records WHERE citizen_id = 'c-2')"
        " WHERE item_id = 'a' AND citizen_id = 'c-1'",
        "UPDATE records SET as_of = '2020-01-01' WHERE item_id = 'a' AND citizen_id = 'c-1'",
        "UPDATE records SET department = 'dept.other' WHERE item_id = 'a' AND citizen_id = 'c-1'",
        # another citizen's data key given to this one
        "UPDATE record_keys SET wrapped_key = (SELECT wrapped_key FROM record_keys WHERE citizen_id = 'c-2')"
        " WHERE citizen_id = 'c-1'",
    ],
)
def test_a_value_or_key_moved_or_changed_in_the_database_does_not_open(store: Store, tamper: str) -> None:
    store.records.put_many([_record("c-1", "a", '"a"'), _record("c-1", "b", '"b"'), _record("c-2", "a", '"other"')])
    with store.engine.begin() as connection:
        connection.execute(text(tamper))
    with pytest.raises(RecordsKeyError, match="could not read records"):
        store.records.for_citizen("c-1")
    with pytest.raises(RecordsKeyError, match="could not read records"):
        store.records.for_delivery("c-1")


def test_erasure_destroys_the_data_key_and_the_values(store: Store, db_backend: str) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    store.records.put_many(
        [_record("c-1", "a", f'"{canary}"'), _record("c-1", "b", "2"), _record("c-2", "a", '"kept"')]
    )
    with store.engine.connect() as connection:
        [wrapped] = connection.execute(text("SELECT wrapped_key FROM record_keys WHERE citizen_id = 'c-1'")).one()

    assert erase_records(store, "c-1")[0] == 2

    assert store.records.for_citizen("c-1") == []
    assert store.records.for_delivery("c-2") == {"a": ("2026-01-01", '"kept"')}
    assert bytes(wrapped) not in _every_stored_byte(store)
    if db_backend == "sqlite":  # overwritten in the file, not only unlinked from its page
        with store.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        assert bytes(wrapped) not in _sqlite_files(store)
    assert erase_records(store, "c-1")[0] == 0  # again: nothing left, not an error

    store.records.put_many([_record("c-1", "a", '"new"')])  # a later push: a new data key
    with store.engine.connect() as connection:
        [rewrapped] = connection.execute(text("SELECT wrapped_key FROM record_keys WHERE citizen_id = 'c-1'")).one()
    assert bytes(rewrapped) != bytes(wrapped)
    assert store.records.for_delivery("c-1") == {"a": ("2026-01-01", '"new"')}


def test_a_rotation_rewraps_every_data_key_and_runs_again_harmlessly(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    records = [_record(f"c-{n}", "a", f'"{n}"') for n in range(7)]
    store.records.put_many(records)
    with store.engine.connect() as connection:
        sealed_before = connection.execute(text("SELECT value_sealed FROM records ORDER BY citizen_id")).all()
    new = RecordsKey.generate()

    assert store.records.rewrap(records_key, new) == 7
    assert store.records.rewrap(records_key, new) == 0  # an interrupted rotation, run again

    with pytest.raises(ConfigurationError, match=f"sealed under records key {new.key_id}"):
        Store.open(database_url, records_key=records_key)
    with Store.open(database_url, records_key=new) as rotated:
        assert [r for citizen in range(7) for r in rotated.records.for_citizen(f"c-{citizen}")] == records
        with rotated.engine.connect() as connection:  # the values themselves are not touched
            assert (
                connection.execute(text("SELECT value_sealed FROM records ORDER BY citizen_id")).all() == sealed_before
            )


def test_a_rotation_that_meets_a_key_it_does_not_know_changes_nothing(store: Store, records_key: RecordsKey) -> None:
    store.records.put_many([_record(f"c-{n}", "a", f'"{n}"') for n in range(3)])
    stranger = RecordsKey.generate()
    with store.engine.begin() as connection:
        connection.execute(
            text("UPDATE record_keys SET records_key_id = :k WHERE citizen_id = 'c-2'"), {"k": stranger.key_id}
        )
    with pytest.raises(RecordsKeyError, match=f"wrapped by records key {stranger.key_id}, neither"):
        store.records.rewrap(records_key, RecordsKey.generate())
    assert store.records.for_delivery("c-0") == {"a": ("2026-01-01", '"0"')}  # still under the old key


def test_an_erasure_and_its_log_entry_commit_together_or_not_at_all(store: Store) -> None:
    store.records.put_many([_record("c-1", "a", '"a"')])
    with store.engine.begin() as connection:  # the log cannot take an entry now
        connection.execute(text("DELETE FROM log_head"))
    with pytest.raises(StorageError, match="could not append to the audit log"):
        erase_records(store, "c-1")
    assert store.records.for_delivery("c-1") == {"a": ("2026-01-01", '"a"')}  # nothing erased unlogged


def test_records_without_their_data_key_are_refused_not_served(store: Store) -> None:
    store.records.put_many([_record("c-1", "a", '"a"')])
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM record_keys"))
    with pytest.raises(RecordsKeyError, match="have no data key"):
        store.records.for_citizen("c-1")


def test_first_pushes_racing_for_a_new_citizen_share_one_data_key(store: Store) -> None:
    def push(n: int) -> int:
        return store.records.put_many([_record("c-new", f"item.{n}", str(n))])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(push, range(8))) == [1] * 8
    assert [r.value_json for r in store.records.for_citizen("c-new")] == [str(n) for n in range(8)]


def _alembic(connection: object, records_key: RecordsKey | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    config.attributes["records_key"] = records_key
    return config


def test_revision_0008_seals_what_an_older_database_held_in_the_clear(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    records = [_record(f"c-{n % 7}", f"item.{n}", f'{{"n":{n},"text":"济南"}}', day=1 + n % 28) for n in range(12_000)]
    store.records.put_many(records)
    with store.engine.begin() as connection:  # back to the values in the clear
        command.downgrade(_alembic(connection, records_key), "0007")
        [clear] = connection.execute(text("SELECT value_json FROM records WHERE item_id = 'item.5'")).one()
        assert clear == '{"n":5,"text":"济南"}'
    store.close()

    other = RecordsKey.generate()
    with Store.open(database_url, records_key=other) as sealed:  # sealed under whichever key migrates
        assert sealed.records.for_citizen("c-3") == [
            r for r in sorted(records, key=lambda r: r.item_id) if r.citizen_id == "c-3"
        ]
        assert b'"text":"' not in _every_stored_byte(sealed)
        if sealed.engine.dialect.name == "sqlite":  # nor left in the file's freed pages
            with sealed.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            assert '"text":"济南"'.encode() not in _sqlite_files(sealed)


def test_revision_0008_without_the_records_key_leaves_an_older_database_as_it_was(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    store.records.put_many([_record("c-1", "a", '"a"')])
    with store.engine.begin() as connection:
        command.downgrade(_alembic(connection, records_key), "0007")
    store.close()

    with pytest.raises(ConfigurationError, match=r"records must be sealed with the gateway's records key"):
        Store.open(database_url)
    with pytest.raises(Exception, match=r"at revision 0007, expected \d{4}"), Store.open(database_url, migrate=False):
        pass
    with Store.open(database_url, records_key=records_key) as upgraded:
        check_schema(upgraded.engine)
        assert upgraded.records.for_delivery("c-1") == {"a": ("2026-01-01", '"a"')}


# --- a rotation made while gateways serve --------------------------------------------------------
# `veilgate keys --rotate-records-key` rewraps every data key in one transaction and then destroys
# the old key, while gateways started before it still hold that key.


def _keys_under(store: Store) -> set[str]:
    with store.engine.connect() as connection:
        return {row[0] for row in connection.execute(text("SELECT DISTINCT records_key_id FROM record_keys"))}


def _store_by(path: str, store: Store, record: StoredRecord) -> None:
    """``put_many`` (the seeder's and the loader's), or the gateway's push: sealed outside the
    write, then stored in a write transaction (the log entry's, when served)."""
    if path == "put_many":
        store.records.put_many([record])
        return
    sealed = store.records.seal_push([record], now=T0)
    with write_connection(store._sessions) as connection:
        store.records.push_in(connection, sealed)


@pytest.mark.parametrize("push", ["put_many", "seal_push"])
def test_a_gateway_started_before_a_rotation_wraps_no_data_key_under_the_old_key(
    store: Store, database_url: str, records_key: RecordsKey, push: str
) -> None:
    """Without the new key on disk it refuses to store a new citizen's records: their data key would
    be wrapped by a key about to be destroyed, and nothing of theirs would open again."""
    store.records.put_many([_record("c-1", "a", '"1"')])
    new = RecordsKey.generate()
    with Store.open(database_url, records_key=records_key) as stale:
        store.records.rewrap(records_key, new)  # another process rotates
        with pytest.raises(RecordsKeyError, match=f"sealed under records key {new.key_id}, and this gateway holds"):
            _store_by(push, stale, _record("c-2", "a", '"2"'))
    assert _keys_under(store) == {new.key_id}
    with Store.open(database_url, records_key=new) as rotated:
        assert rotated.records.for_delivery("c-1") == {"a": ("2026-01-01", '"1"')}
        assert rotated.records.for_delivery("c-2") == {}  # nothing half-written


@pytest.mark.parametrize("push", ["put_many", "seal_push"])
def test_a_gateway_started_before_a_rotation_takes_up_the_new_key_without_a_restart(
    store: Store, database_url: str, records_key: RecordsKey, push: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.records.put_many([_record("c-1", "a", '"1"')])
    new = RecordsKey.generate()
    on_disk = [records_key]  # keys/records.key, as the rotation leaves it at each step
    with Store.open(database_url, records_key=records_key, reload_records_keys=lambda: list(on_disk)) as serving:
        sealed = serving.records.seal_push([_record("c-2", "a", '"2"')], now=T0)  # sealed under the old key
        on_disk.append(new)  # records.key.next, written first
        store.records.rewrap(records_key, new)
        on_disk.remove(records_key)  # the old key destroyed
        with write_connection(serving._sessions) as connection:  # a push sealed before the rotation lands after it
            assert serving.records.push_in(connection, sealed) == []
        _store_by(push, serving, _record("c-3", "a", '"3"'))
        assert serving.records.for_delivery("c-1") == {"a": ("2026-01-01", '"1"')}
        assert serving.records.key_id == new.key_id
    assert "records key " + new.key_id + " taken up in place of " + records_key.key_id in caplog.text
    assert _keys_under(store) == {new.key_id}
    with Store.open(database_url, records_key=new) as rotated:
        assert [rotated.records.for_delivery(f"c-{n}") for n in (2, 3)] == [
            {"a": ("2026-01-01", '"2"')},
            {"a": ("2026-01-01", '"3"')},
        ]


def test_a_gateway_started_after_an_interrupted_rotation_serves_with_the_new_key(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    """Rewrapped, but records.key.next never replaced records.key: the gateway finds the key the
    database names among the files, where before it refused to start."""
    store.records.put_many([_record("c-1", "a", '"1"')])
    new = RecordsKey.generate()
    store.records.rewrap(records_key, new)
    with Store.open(database_url, records_key=records_key, reload_records_keys=lambda: [records_key, new]) as started:
        assert started.records.for_delivery("c-1") == {"a": ("2026-01-01", '"1"')}


def test_gateways_holding_different_keys_on_an_empty_database_cannot_both_store(
    store: Store, database_url: str
) -> None:
    """The first data key stored names the database's records key; a gateway holding another one
    is refused, where before each would have wrapped its own citizens under its own key."""
    with Store.open(database_url, records_key=RecordsKey.generate()) as other:
        store.records.put_many([_record("c-1", "a", '"1"')])
        with pytest.raises(RecordsKeyError, match="and this gateway holds"):
            other.records.put_many([_record("c-2", "a", '"2"')])
    assert _keys_under(store) == {store.records.key_id}


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)  # SQLite: one writer at a time orders them
def test_on_postgresql_a_rotation_waits_for_a_push_that_read_the_old_key(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    """The push read the current key before the rotation moved it, and commits after the rotation's
    scan began: the rotation waits for it, then rewraps the data key it stored."""
    store.records.put_many([_record("c-1", "a", '"1"')])
    new = RecordsKey.generate()
    sealed = store.records.seal_push([_record("c-2", "a", '"2"')], now=T0)
    with store.engine.connect() as connection, connection.begin():
        store.records.push_in(connection, sealed)  # c-2's data key under the old key, not committed yet
        with ThreadPoolExecutor(1) as pool:
            rotation = pool.submit(store.records.rewrap, records_key, new)
            with store.engine.connect() as watcher:  # until the rotation waits on the current key's row
                deadline = time.monotonic() + 10
                while not watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                ).scalar_one():
                    assert time.monotonic() < deadline, "the rotation did not wait for the push"
                    time.sleep(0.01)
            connection.commit()
            assert rotation.result(timeout=10) == 2
    assert _keys_under(store) == {new.key_id}
    with Store.open(database_url, records_key=new) as rotated:
        assert rotated.records.for_delivery("c-2") == {"a": ("2026-01-01", '"2"')}


def test_revision_0011_names_the_key_the_stored_data_keys_are_under(
    store: Store, database_url: str, records_key: RecordsKey
) -> None:
    store.records.put_many([_record(f"c-{n}", "a", f'"{n}"') for n in range(3)])
    with store.engine.begin() as connection:
        command.downgrade(_alembic(connection, records_key), "0010")
        connection.execute(  # a data key an earlier rotation stranded under a key since destroyed
            text("UPDATE record_keys SET records_key_id = 'feedfacefeedface' WHERE citizen_id = 'c-2'")
        )
        command.upgrade(_alembic(connection, records_key), "head")
        current = connection.execute(text("SELECT id, key_id FROM records_key_current")).all()
    assert [tuple(row) for row in current] == [(1, records_key.key_id)]  # most of them are under it
    with Store.open(database_url, records_key=records_key) as upgraded:
        assert upgraded.records.for_delivery("c-1") == {"a": ("2026-01-01", '"1"')}


def test_revision_0011_on_a_database_with_no_data_key_leaves_the_first_one_to_name_it(
    store: Store, database_url: str
) -> None:
    with store.engine.begin() as connection:
        command.downgrade(_alembic(connection, None), "0010")
        command.upgrade(_alembic(connection, None), "head")
        assert connection.execute(text("SELECT count(*) FROM records_key_current")).scalar_one() == 0
    store.records.put_many([_record("c-1", "a", '"1"')])
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT key_id FROM records_key_current")).scalar_one() == store.records.key_id

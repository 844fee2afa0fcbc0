"""Departments and their pushed records, on every backend: the registry, the newest record winning,
and a push that fails leaving nothing behind."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from veilgate.errors import DepartmentAlreadyRegistered, DepartmentNotRegistered
from veilgate_server.crypto.records import RecordsKey, RecordsKeyError
from veilgate_server.storage import RecordStore, Store, StoredRecord
from veilgate_server.storage._session import write_connection

NOW = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.UTC)
ITEM = "social_insurance.cumulative_contribution_months"
OTHER = "social_insurance.insured_status"


def _record(citizen: str, value: str, as_of: dt.date, item: str = ITEM) -> StoredRecord:
    return StoredRecord(citizen, item, "social_insurance", as_of, value)


def _push(store: Store, *records: StoredRecord) -> list[int]:
    sealed = store.records.seal_push(list(records), now=NOW)
    with write_connection(store._sessions) as connection:
        return store.records.push_in(connection, sealed)


def _values(store: Store, citizen: str) -> dict[str, tuple[dt.date, str]]:
    return {r.item_id: (r.as_of, r.value_json) for r in store.records.for_citizen(citizen)}


def test_departments_are_registered_once_enabled_and_disabled(store: Store) -> None:
    with pytest.raises(DepartmentNotRegistered):
        store.departments.get("social_insurance")
    registered = store.departments.register("social_insurance", at=NOW, certificate_serial="0abc")
    assert (registered.department_id, registered.enabled, registered.registered_at) == ("social_insurance", True, NOW)
    assert store.departments.get("social_insurance") == registered
    with pytest.raises(DepartmentAlreadyRegistered):
        store.departments.register("social_insurance", at=NOW)
    assert not store.departments.set_enabled("social_insurance", False).enabled
    assert not store.departments.get("social_insurance").enabled
    store.departments.register("housing_fund", at=NOW)
    assert [d.department_id for d in store.departments.list()] == ["housing_fund", "social_insurance"]
    with pytest.raises(DepartmentNotRegistered):
        store.departments.set_enabled("taxation", True)
    with pytest.raises(ValueError, match="id must match"):
        store.departments.register("Social Insurance", at=NOW)


def test_the_newest_record_wins_and_an_older_one_is_returned_as_stale(store: Store) -> None:
    october, november = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
    assert _push(store, _record("c-1", "10", october), _record("c-1", '"contributing"', october, OTHER)) == []
    assert _push(store, _record("c-1", "11", november)) == []
    assert _values(store, "c-1")[ITEM] == (november, "11")
    # A delayed retry of the October push: not applied, and said so, by index.
    assert _push(store, _record("c-2", "3", october), _record("c-1", "10", october)) == [1]
    assert _values(store, "c-1") == {ITEM: (november, "11"), OTHER: (october, '"contributing"')}
    assert _values(store, "c-2") == {ITEM: (october, "3")}
    # The same date again is a correction: it replaces.
    assert _push(store, _record("c-1", "12", november)) == []
    assert _values(store, "c-1")[ITEM] == (november, "12")


def test_a_citizen_whose_first_records_another_write_stored_meanwhile_keeps_one_data_key(store: Store) -> None:
    """Sealed under a new data key, then another write (another gateway's first push of the same
    citizen) stores theirs first: the push seals its values again under the stored key, so every
    record of the citizen still opens."""
    november = dt.date(2026, 11, 1)
    sealed = store.records.seal_push([_record("c-new", "1", november)], now=NOW)
    store.records.put_many([_record("c-new", '"contributing"', november, OTHER)])  # the other write
    with write_connection(store._sessions) as connection:
        assert store.records.push_in(connection, sealed) == []
    assert _values(store, "c-new") == {ITEM: (november, "1"), OTHER: (november, '"contributing"')}


def test_a_push_never_brings_back_a_data_key_an_erasure_destroyed(store: Store) -> None:
    """The citizen is erased between the push's sealing (which read their data key) and its write:
    the push stores their values under a fresh key, never the destroyed one, so nothing the old key
    sealed (a page not yet reused, a backup) opens again."""
    november = dt.date(2026, 11, 1)
    _push(store, _record("c-1", "10", dt.date(2026, 10, 1)), _record("c-1", '"contributing"', november, OTHER))
    destroyed = _wrapped_key(store, "c-1")
    sealed = store.records.seal_push([_record("c-1", "11", november)], now=NOW)
    with write_connection(store._sessions) as connection:
        assert RecordStore.erase_in(connection, "c-1") == 2
    with write_connection(store._sessions) as connection:
        assert store.records.push_in(connection, sealed) == []
    assert _wrapped_key(store, "c-1") not in (None, destroyed)
    assert _values(store, "c-1") == {ITEM: (november, "11")}


def _wrapped_key(store: Store, citizen: str) -> bytes | None:
    with store.engine.connect() as connection:
        row = connection.execute(
            text("SELECT wrapped_key FROM record_keys WHERE citizen_id = :c"), {"c": citizen}
        ).one_or_none()
    return None if row is None else bytes(row[0])


def test_a_push_that_fails_leaves_nothing_and_the_transaction_usable(store: Store, database_url: str) -> None:
    november = dt.date(2026, 11, 1)
    with Store.open(database_url, records_key=RecordsKey.generate()) as other:  # another gateway's key
        _push(store, _record("c-1", "10", dt.date(2026, 10, 1)))  # after it started: it holds the wrong key
        with pytest.raises(RecordsKeyError):  # c-1's data key is not under this key: refused before any write
            other.records.seal_push([_record("c-1", "11", november)], now=NOW)
        sealed = store.records.seal_push([_record("c-2", "1", november), _record("c-3", "1", november)], now=NOW)
        store.records.put_many([_record("c-3", "2", november, OTHER)])  # c-3's key, stored meanwhile
        with store.engine.begin() as changed:  # and found under a records key no gateway holds
            changed.execute(text("UPDATE record_keys SET records_key_id = 'feedfacefeedface' WHERE citizen_id = 'c-3'"))
        with write_connection(store._sessions) as connection:
            with pytest.raises(RecordsKeyError):  # after c-2's key was written in the same transaction
                store.records.push_in(connection, sealed)
            connection.execute(text("SELECT 1"))  # rolled back to the savepoint, not aborted
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM record_keys WHERE citizen_id = 'c-2'")).scalar() == 0
        assert connection.execute(text("SELECT count(*) FROM records WHERE citizen_id = 'c-2'")).scalar() == 0
    assert _values(store, "c-1")[ITEM] == (dt.date(2026, 10, 1), "10")


def test_a_push_repeating_a_citizen_and_item_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="at most one record per citizen and item"):
        _push(store, _record("c-1", "1", dt.date(2026, 10, 1)), _record("c-1", "2", dt.date(2026, 11, 1)))
    assert _values(store, "c-1") == {}

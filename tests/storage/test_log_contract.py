"""Storage contract of the audit log and its group-commit writer, on SQLite and PostgreSQL.

What the rest of the gateway relies on: indices are dense from 0 with no gap or duplicate however
many writers and replicas race; a batch is all or nothing; every complete aligned subtree is stored
with the right hash (checked against a reference MTH computed here from the leaf hashes); checkpoints
never fork; and an append whose commit fails reaches its caller as StorageError, with no index.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, func, inspect, select, text

from veilgate.errors import StorageError, TokenReplayed
from veilgate_server.core.merkle import root_of
from veilgate_server.storage import (
    AppendRequest,
    AuditLog,
    CheckpointConflict,
    CheckpointSuperseded,
    LogWriter,
    Store,
    db,
)
from veilgate_server.storage.log import _Pending
from veilgate_server.storage.models import AuditLogSubject, AuditLogSubtree, Base, CitizenLogKey

T0 = dt.datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)
CITIZEN = "370102199001011234"
OTHER_CITIZEN = "370102198505054321"


# --- a reference tree, written from RFC 9162 §2.1.1 and nothing else ------------------------------


def _leaf(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf *hashes*: split at the largest power of two smaller than n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _entry(n: int) -> bytes:
    return f'{{"call":{n}}}'.encode()


def _requests(start: int, count: int, subject: str | None = None) -> list[AppendRequest]:
    return [AppendRequest(_entry(n), subject) for n in range(start, start + count)]


def _count(store: Store, model: type[Base]) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


# --- schema ---------------------------------------------------------------------------------------


def test_migration_matches_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_0002_and_back(store: Store) -> None:
    store.log.append_batch(_requests(0, 3))
    with store.engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
        assert not inspect(conn).has_table("log_entries")
        command.upgrade(config, "head")
    fresh = Store(store.engine)
    assert fresh.log.tree_size() == 0
    assert fresh.log.append_batch(_requests(0, 1)) == [0]


# --- appends --------------------------------------------------------------------------------------


def test_an_empty_log(store: Store) -> None:
    assert store.log.tree_size() == 0
    assert store.log.entries(0, 10) == []
    assert store.log.leaf_hashes(0, 10) == []
    assert store.log.latest_checkpoint() is None
    assert store.log.checkpoints() == []
    assert store.log.append_batch([]) == []
    assert root_of(0, store.log) == hashlib.sha256(b"").digest()


def test_indices_are_dense_from_zero(store: Store) -> None:
    assert store.log.append_batch(_requests(0, 3)) == [0, 1, 2]
    assert store.log.append_batch(_requests(3, 1)) == [3]
    assert store.log.append_batch(_requests(4, 5)) == [4, 5, 6, 7, 8]
    assert store.log.tree_size() == 9
    assert [e.index for e in store.log.entries(0, 100)] == list(range(9))
    assert [e.entry for e in store.log.entries(0, 100)] == [_entry(n) for n in range(9)]


def test_malformed_requests_are_refused_before_anything_is_written(store: Store) -> None:
    with pytest.raises(ValueError, match="non-empty bytes"):
        store.log.append_batch([AppendRequest(b"ok"), AppendRequest(b"")])
    with pytest.raises(ValueError, match="citizen_id"):
        store.log.append_batch([AppendRequest(b"ok", "x" * 65)])
    assert store.log.tree_size() == 0


def test_a_failing_batch_writes_nothing(store: Store) -> None:
    # A stray subtree row makes the batch's own insert of subtree (1, 0) collide half-way through.
    with store.engine.begin() as conn:
        conn.execute(AuditLogSubtree.__table__.insert(), [{"level": 1, "idx": 0, "hash": b"\x00" * 32}])

    with pytest.raises(StorageError, match=r"^could not append to the audit log"):
        store.log.append_batch(_requests(0, 3, CITIZEN))

    assert store.log.tree_size() == 0
    assert store.log.entries(0, 10) == []
    assert store.log.indices_for_citizen(CITIZEN) == []
    with store.engine.begin() as conn:
        conn.execute(AuditLogSubtree.__table__.delete())
    assert store.log.append_batch(_requests(0, 3, CITIZEN)) == [0, 1, 2]
    assert root_of(3, store.log) == _mth([_leaf(_entry(n)) for n in range(3)])


def test_a_resolved_entry_commits_with_its_change_or_not_at_all(store: Store) -> None:
    """``resolve`` makes a call's state change in the batch's transaction and returns its entry: the
    change, the entry and its neighbours commit together; a change that fails takes them all back."""
    expires = T0 + dt.timedelta(minutes=5)

    def spend(jti: str) -> Callable[[Connection], bytes]:
        def resolve(connection: Connection) -> bytes:
            store.requests.consume_in(connection, CITIZEN, jti, expires_at=expires, now=T0)
            return f'{{"spent":"{jti}"}}'.encode()

        return resolve

    assert store.log.append_batch(
        [AppendRequest(_entry(0)), AppendRequest(resolve=spend("jti-1"), subject_citizen_id=CITIZEN)]
    ) == [0, 1]
    assert [e.entry for e in store.log.entries(0, 2)] == [_entry(0), b'{"spent":"jti-1"}']
    with pytest.raises(TokenReplayed):  # committed with the entry: spent for good
        store.requests.consume(CITIZEN, "jti-1", expires_at=expires, now=T0)

    def broken(connection: Connection) -> bytes:
        spend("jti-2")(connection)
        raise RuntimeError("the entry could not be built")

    with pytest.raises(RuntimeError):
        store.log.append_batch([AppendRequest(_entry(2)), AppendRequest(resolve=broken)])
    assert store.log.tree_size() == 2
    store.requests.consume(CITIZEN, "jti-2", expires_at=expires, now=T0)  # its spend was rolled back
    with pytest.raises(ValueError, match="non-empty bytes"):
        store.log.append_batch([AppendRequest(resolve=lambda connection: b"")])
    assert store.log.tree_size() == 2


def test_every_complete_subtree_is_stored_with_its_hash(store: Store) -> None:
    sizes = [1, 2, 3, 5, 7, 1, 13, 31, 1, 4, 64, 1, 2, 17, 9]
    for size in sizes:
        store.log.append_batch(_requests(store.log.tree_size(), size))
    n = sum(sizes)
    leaves = [_leaf(_entry(i)) for i in range(n)]
    assert store.log.tree_size() == n
    assert store.log.leaf_hashes(0, n) == leaves

    expected = {
        (level, index): _mth(leaves[index << level : (index + 1) << level])
        for level in range(n.bit_length())
        for index in range(n >> level)
    }
    assert store.log.subtree_hashes(list(expected)) == expected
    # Levels >= 1 are the only rows of log_subtrees, and there is no extra one.
    assert _count(store, AuditLogSubtree) == sum(1 for level, _ in expected if level >= 1)
    # Incomplete or out-of-range subtrees are simply absent.
    assert store.log.subtree_hashes([(0, n), (1, n // 2), (n.bit_length(), 0)]) == {}
    for size in range(n + 1):
        assert root_of(size, store.log) == _mth(leaves[:size])


def test_subtree_hashes_refuses_malformed_keys(store: Store) -> None:
    with pytest.raises(ValueError, match="subtree key"):
        store.log.subtree_hashes([(-1, 0)])
    with pytest.raises(ValueError, match="subtree key"):
        store.log.subtree_hashes([(1, -1)])


def test_replicas_take_turns_on_one_database(database_url: str) -> None:
    """Each store caches its frontier; an append by the other replica must invalidate it."""
    with Store.open(database_url) as first, Store.open(database_url) as second:
        for round_ in range(6):
            for store in (first, second):
                store.log.append_batch(_requests(store.log.tree_size(), round_ + 1))
        n = first.log.tree_size()
        leaves = [_leaf(_entry(i)) for i in range(n)]
        assert second.log.leaf_hashes(0, n) == leaves
        for size in range(n + 1):
            assert root_of(size, first.log) == _mth(leaves[:size])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 90)), min_size=1, max_size=8))
def test_replicas_in_any_order_store_every_subtree_right(database_url: str, turns: list[tuple[int, int]]) -> None:
    """Three replicas append in any order and batch sizes: each finds its cached frontier stale by
    none, a few (caught up leaf by leaf) or many entries (read back from the stored subtrees), and
    every complete subtree must still be stored with its reference hash."""
    with Store.open(database_url) as a, Store.open(database_url) as b, Store.open(database_url) as c:
        replicas = (a, b, c)
        start = a.log.tree_size()  # the database is shared by every example: the log only grows
        for replica, count in turns:
            store = replicas[replica]
            store.log.append_batch(_requests(store.log.tree_size(), count))
        n = a.log.tree_size()
        assert n == start + sum(count for _, count in turns)
        leaves = [_leaf(_entry(i)) for i in range(n)]
        assert b.log.leaf_hashes(0, n) == leaves
        for level in range(1, n.bit_length()):
            width = 1 << level
            expected = {(level, i): _mth(leaves[i * width : (i + 1) * width]) for i in range(n >> level)}
            assert c.log.subtree_range(level, 0, n >> level) == expected


def test_a_replica_does_not_extend_a_log_missing_what_it_must_catch_up(database_url: str) -> None:
    with Store.open(database_url) as first, Store.open(database_url) as second:
        second.log.append_batch(_requests(second.log.tree_size(), 2))  # its cached frontier: here
        size = first.log.tree_size()
        first.log.append_batch(_requests(size, 3))
        with first.engine.begin() as connection:
            connection.execute(text("DELETE FROM log_entries WHERE idx = :idx"), {"idx": size + 1})
        with pytest.raises(StorageError, match="stored hashes are incomplete"):
            second.log.append_batch(_requests(size + 3, 1))
        assert second.log.tree_size() == size + 3


def test_entries_and_leaf_hashes_in_pages(store: Store) -> None:
    before = dt.datetime.now(dt.UTC)
    store.log.append_batch(_requests(0, 25))
    after = dt.datetime.now(dt.UTC)

    pages = [store.log.entries(start, 10) for start in (0, 10, 20, 30)]
    assert [len(page) for page in pages] == [10, 10, 5, 0]
    entries = [e for page in pages for e in page]
    assert [e.index for e in entries] == list(range(25))
    assert [e.entry for e in entries] == [_entry(i) for i in range(25)]
    assert [e.leaf_hash for e in entries] == [_leaf(_entry(i)) for i in range(25)]
    for e in entries:
        assert e.created_at.utcoffset() == dt.timedelta(0)
        assert before - dt.timedelta(seconds=1) <= e.created_at <= after + dt.timedelta(seconds=1)
    assert store.log.leaf_hashes(7, 4) == [_leaf(_entry(i)) for i in range(7, 11)]
    assert store.log.leaf_hashes(24, 10) == [_leaf(_entry(24))]
    assert store.log.entries(3, 0) == []
    # The whole-log passes' read: plain tuples of int and bytes, on every backend.
    hashed = store.log.hashed_entries(20, 10)
    assert hashed == [(i, _entry(i), _leaf(_entry(i))) for i in range(20, 25)]
    assert all(type(i) is int and type(e) is bytes and type(h) is bytes for i, e, h in hashed)
    with pytest.raises(ValueError, match="negative"):
        store.log.entries(-1, 3)
    with pytest.raises(ValueError, match="negative"):
        store.log.leaf_hashes(0, -3)


# --- checkpoints ----------------------------------------------------------------------------------


def _root(store: Store, size: int) -> bytes:
    return _mth(store.log.leaf_hashes(0, size))


def test_checkpoints_are_kept_under_compare_and_swap(store: Store) -> None:
    store.log.append_batch(_requests(0, 10))

    first = store.log.store_checkpoint(5, _root(store, 5), "note 5\n", at=T0)
    assert (first.tree_size, first.root_hash, first.note, first.created_at) == (5, _root(store, 5), "note 5\n", T0)
    # The same root again is idempotent and keeps the first note.
    assert store.log.store_checkpoint(5, _root(store, 5), "another note\n", at=T0 + dt.timedelta(seconds=1)) == first
    # A different root for the same size would be a fork.
    with pytest.raises(CheckpointConflict, match="fork"):
        store.log.store_checkpoint(5, _root(store, 6), "forked\n", at=T0)

    tenth = store.log.store_checkpoint(10, _root(store, 10), "note 10\n", at=T0)
    with pytest.raises(CheckpointSuperseded, match="older than the latest"):
        store.log.store_checkpoint(7, _root(store, 7), "note 7\n", at=T0)
    # A fork is never mistaken for a checkpoint that merely lost a race to a larger tree.
    with pytest.raises(CheckpointConflict, match="fork") as forked:
        store.log.store_checkpoint(5, _root(store, 6), "forked\n", at=T0)
    assert not isinstance(forked.value, CheckpointSuperseded)
    # Re-storing an older checkpoint that is already there stays idempotent.
    assert store.log.store_checkpoint(5, _root(store, 5), "note 5\n", at=T0) == first

    assert store.log.latest_checkpoint() == tenth
    assert store.log.checkpoints() == [first, tenth]
    assert isinstance(CheckpointConflict("x"), StorageError)


def test_a_checkpoint_must_be_over_the_stored_log(store: Store) -> None:
    store.log.append_batch(_requests(0, 4))

    with pytest.raises(CheckpointConflict, match="fewer than 5 entries"):
        store.log.store_checkpoint(5, _root(store, 4), "ahead\n", at=T0)
    with pytest.raises(CheckpointConflict, match="not the log's root"):
        store.log.store_checkpoint(4, b"\x07" * 32, "made up\n", at=T0)
    with pytest.raises(ValueError, match="32 bytes"):
        store.log.store_checkpoint(4, b"\x07" * 31, "short\n", at=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.log.store_checkpoint(4, _root(store, 4), "naive\n", at=T0.replace(tzinfo=None))
    assert store.log.checkpoints() == []
    empty = store.log.store_checkpoint(0, hashlib.sha256(b"").digest(), "empty\n", at=T0)
    assert store.log.latest_checkpoint() == empty


def test_racing_checkpoints_of_one_size_store_one_root(store: Store) -> None:
    store.log.append_batch(_requests(0, 8))
    barrier = threading.Barrier(8)

    def attempt(n: int) -> bytes | None:
        root = _root(store, 8) if n % 2 == 0 else b"\x09" * 32
        barrier.wait(timeout=30)
        try:
            return store.log.store_checkpoint(8, root, f"note {n}\n", at=T0).root_hash
        except CheckpointConflict:
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(_root(store, 8)) == 4
    assert [c.tree_size for c in store.log.checkpoints()] == [8]


# --- the private side: subjects and pseudonym keys -------------------------------------------------


def test_indices_for_citizen_newest_first(store: Store) -> None:
    store.log.append_batch(
        [AppendRequest(b"a", CITIZEN), AppendRequest(b"b", None), AppendRequest(b"c", OTHER_CITIZEN)]
    )
    store.log.append_batch([AppendRequest(b"d", CITIZEN), AppendRequest(b"e", CITIZEN)])

    assert store.log.indices_for_citizen(CITIZEN) == [4, 3, 0]
    assert store.log.indices_for_citizen(CITIZEN, limit=2) == [4, 3]
    assert store.log.indices_for_citizen(OTHER_CITIZEN) == [2]
    assert store.log.indices_for_citizen("nobody") == []


def test_pseudonym_key_is_created_once(store: Store) -> None:
    assert store.log.pseudonym_key(CITIZEN, create=False) is None
    key = store.log.pseudonym_key(CITIZEN, create=True)
    assert key is not None
    assert len(key) == 32
    assert store.log.pseudonym_key(CITIZEN, create=False) == key
    assert store.log.pseudonym_key(CITIZEN, create=True) == key
    assert store.log.pseudonym_key(OTHER_CITIZEN, create=True) != key


def test_racing_pseudonym_key_creators_get_one_key(store: Store) -> None:
    barrier = threading.Barrier(8)

    def create() -> bytes | None:
        barrier.wait(timeout=30)
        return store.log.pseudonym_key(CITIZEN, create=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = [f.result(timeout=60) for f in [pool.submit(create) for _ in range(8)]]
    assert len(set(keys)) == 1
    assert keys[0] is not None
    assert _count(store, CitizenLogKey) == 1


def test_erase_citizen_unlinks_but_keeps_the_log(store: Store) -> None:
    store.log.pseudonym_key(CITIZEN, create=True)
    other_key = store.log.pseudonym_key(OTHER_CITIZEN, create=True)
    store.log.append_batch([AppendRequest(b"a", CITIZEN), AppendRequest(b"b", OTHER_CITIZEN)])
    store.log.append_batch([AppendRequest(b"c", CITIZEN)])
    store.log.store_checkpoint(3, _root(store, 3), "note\n", at=T0)

    store.log.erase_citizen(CITIZEN)
    store.log.erase_citizen(CITIZEN)  # idempotent

    assert store.log.pseudonym_key(CITIZEN, create=False) is None
    assert store.log.indices_for_citizen(CITIZEN) == []
    assert store.log.pseudonym_key(OTHER_CITIZEN, create=False) == other_key
    assert store.log.indices_for_citizen(OTHER_CITIZEN) == [1]
    assert _count(store, AuditLogSubject) == 1
    # The entries and the checkpoint over them are untouched.
    assert [e.entry for e in store.log.entries(0, 10)] == [b"a", b"b", b"c"]
    assert root_of(3, store.log) == store.log.checkpoints()[0].root_hash
    # A new key after erasure is a new pseudonym, unlinkable to the old one.
    assert store.log.pseudonym_key(CITIZEN, create=True) is not None


# --- the group-commit writer ----------------------------------------------------------------------


def _hammer(writer: LogWriter, threads: int, per_thread: int, tag: str) -> dict[int, bytes]:
    """``threads`` callers each append ``per_thread`` entries; the acknowledged index -> bytes."""
    barrier = threading.Barrier(threads)

    def caller(t: int) -> list[tuple[int, bytes]]:
        barrier.wait(timeout=30)
        acked = []
        for i in range(per_thread):
            entry = f"{tag}:{t}:{i}".encode()
            acked.append((writer.append(AppendRequest(entry, CITIZEN if i % 3 == 0 else None)), entry))
        return acked

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = [f.result(timeout=120) for f in [pool.submit(caller, t) for t in range(threads)]]
    acked = [pair for result in results for pair in result]
    indices = [index for index, _ in acked]
    assert len(set(indices)) == len(indices), "an index was handed out twice"
    return dict(acked)


def _assert_log_holds(log: AuditLog, acked: dict[int, bytes]) -> None:
    n = log.tree_size()
    assert sorted(acked) == list(range(n)), "indices are not dense"
    entries = log.entries(0, n)
    assert {e.index: e.entry for e in entries} == acked
    leaves = [e.leaf_hash for e in entries]
    assert leaves == [_leaf(e.entry) for e in entries]
    assert root_of(n, log) == _mth(leaves)


def test_writer_group_commits_concurrent_callers(store: Store) -> None:
    with LogWriter(store.log, linger_seconds=0.001) as writer:
        acked = _hammer(writer, threads=16, per_thread=50, tag="w")
        stats = writer.stats

    assert sorted(acked) == list(range(800))
    _assert_log_holds(store.log, acked)
    assert stats.entries == 800
    assert stats.batches < 800  # callers did share transactions
    assert len(store.log.indices_for_citizen(CITIZEN, limit=10_000)) == 16 * 17


def test_two_replicas_append_concurrently(database_url: str) -> None:
    with (
        Store.open(database_url) as first,
        Store.open(database_url) as second,
        LogWriter(first.log) as first_writer,
        LogWriter(second.log) as second_writer,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        futures = [
            pool.submit(_hammer, first_writer, 8, 50, "first"),
            pool.submit(_hammer, second_writer, 8, 50, "second"),
        ]
        acked_first, acked_second = (f.result(timeout=180) for f in futures)

        assert not acked_first.keys() & acked_second.keys()
        _assert_log_holds(first.log, acked_first | acked_second)


def test_a_failed_commit_fails_the_caller(store: Store) -> None:
    with LogWriter(store.log) as writer:
        assert writer.append(AppendRequest(b"before")) == 0
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE log_entries"))

        with pytest.raises(StorageError, match=r"^could not append to the audit log: the commit failed"):
            writer.append(AppendRequest(b"after"))
        # The writer survives the failure and keeps failing closed.
        with pytest.raises(StorageError):
            writer.append(AppendRequest(b"again"))
    assert store.log.tree_size() == 1


def test_every_caller_of_a_failing_batch_gets_storage_error(store: Store) -> None:
    writer = LogWriter(store.log, linger_seconds=0.01)
    writer.start()
    try:
        writer.append(AppendRequest(b"warm up"))
        store.engine.dispose()  # drop the pooled connections too: the writer must reconnect
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE log_subjects"))
        errors: list[BaseException] = []

        def caller(n: int) -> None:
            try:
                writer.append(AppendRequest(f"x{n}".encode(), CITIZEN))
            except StorageError as e:
                errors.append(e)

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(errors) == 8
    finally:
        writer.close()
    assert store.log.tree_size() == 1


def test_writer_refuses_appends_outside_its_life(store: Store) -> None:
    writer = LogWriter(store.log)
    with pytest.raises(StorageError, match="not running"):
        writer.append(AppendRequest(b"early"))
    writer.start()
    with pytest.raises(RuntimeError):
        writer.start()
    with pytest.raises(ValueError, match="non-empty"):
        writer.append(AppendRequest(b""))
    assert writer.append(AppendRequest(b"on time")) == 0
    writer.close()
    writer.close()
    with pytest.raises(StorageError, match="not running"):
        writer.append(AppendRequest(b"late"))


# --- the writer against a simulated log (no database: run once) -----------------------------------


class _GatedLog:
    """An ``append_batch`` that blocks until released, records its batches, and can be made to fail."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[bytes]] = []
        self.fail_with: Exception | None = None
        self._size = 0

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[int]:
        self.entered.set()
        assert self.gate.wait(timeout=30)
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append([r.entry for r in requests])
        start, self._size = self._size, self._size + len(requests)
        return list(range(start, self._size))


def _writer(log: _GatedLog, **kwargs: float) -> LogWriter:
    writer = LogWriter(log, **kwargs)  # type: ignore[arg-type]
    writer.start()
    return writer


def _in_thread(action: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(action())
        except Exception as e:
            out.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_callers_queued_during_a_commit_share_the_next_one() -> None:
    log = _GatedLog()
    writer = _writer(log, linger_seconds=0)
    try:
        first, first_out = _in_thread(lambda: writer.append(AppendRequest(b"first")))
        assert log.entered.wait(timeout=30)
        others = [_in_thread(lambda n=n: writer.append(AppendRequest(f"o{n}".encode()))) for n in range(5)]
        while len(writer._batches[0].items if writer._batches else []) < 5:
            threading.Event().wait(0.001)
        log.gate.set()
        for thread, _ in [(first, first_out), *others]:
            thread.join(timeout=30)
    finally:
        writer.close()
    assert log.batches[0] == [b"first"]
    assert sorted(log.batches[1]) == sorted(f"o{n}".encode() for n in range(5))
    assert first_out == [0]
    assert sorted(out[0] for _, out in others) == [1, 2, 3, 4, 5]  # type: ignore[type-var]


def test_a_failing_log_fails_the_callers_and_hands_out_no_index() -> None:
    log = _GatedLog()
    log.fail_with = RuntimeError("a bug, not a StorageError")
    log.gate.set()
    writer = _writer(log)
    try:
        with pytest.raises(StorageError, match="the commit failed"):
            writer.append(AppendRequest(b"x"))
    finally:
        writer.close()
    assert writer.stats.entries == 0


def test_a_timed_out_caller_is_withdrawn_if_its_batch_has_not_started() -> None:
    log = _GatedLog()
    writer = _writer(log, linger_seconds=0)
    try:
        blocker, blocker_out = _in_thread(lambda: writer.append(AppendRequest(b"blocker")))
        assert log.entered.wait(timeout=30)
        with pytest.raises(StorageError, match="before the commit began"):
            writer.append(AppendRequest(b"impatient"), timeout=0.05)
        log.gate.set()
        blocker.join(timeout=30)
        assert writer.append(AppendRequest(b"later")) == 1
    finally:
        writer.close()
    assert blocker_out == [0]
    assert [entry for batch in log.batches for entry in batch] == [b"blocker", b"later"]


class _HeldTwiceLog(_GatedLog):
    """Holds its first batch until ``gate`` and its second until ``second_gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.second_gate = threading.Event()
        self.second_entered = threading.Event()

    def append_batch(self, requests: Sequence[AppendRequest]) -> list[int]:
        if self.batches:
            self.second_entered.set()
            assert self.second_gate.wait(timeout=30)
        return super().append_batch(requests)


def test_callers_who_gave_up_do_not_keep_the_rest_of_their_batch_waiting() -> None:
    """A batch's callers wake one another in turn; one that timed out while its batch committed is
    passed over, so the callers after it still get their indices at once."""
    log = _HeldTwiceLog()
    writer = _writer(log, linger_seconds=0)
    try:
        first, first_out = _in_thread(lambda: writer.append(AppendRequest(b"first")))
        assert log.entered.wait(timeout=30)
        patience = {b"a": 0.5, b"b": 60.0, b"c": 0.5, b"d": 60.0, b"e": 0.5}  # in queue order
        callers: dict[bytes, tuple[threading.Thread, list[object]]] = {}
        for entry, timeout in patience.items():
            callers[entry] = _in_thread(lambda e=entry, t=timeout: writer.append(AppendRequest(e), timeout=t))
            while len(writer._batches[0].items if writer._batches else []) < len(callers):
                threading.Event().wait(0.001)
        log.gate.set()  # the first batch commits; the second is taken and held
        assert log.second_entered.wait(timeout=30)
        for entry in (b"a", b"c", b"e"):
            callers[entry][0].join(timeout=30)  # they time out while their batch is held
        log.second_gate.set()
        for entry in (b"b", b"d"):
            callers[entry][0].join(timeout=10)  # far less than their own 60 s timeout
            assert not callers[entry][0].is_alive(), "a caller after one who gave up was not woken"
        first.join(timeout=30)
    finally:
        writer.close()
    assert first_out == [0]
    assert log.batches[1] == list(patience)  # taken before anyone gave up: all of it committed
    assert [callers[entry][1] for entry in (b"b", b"d")] == [[2], [4]]
    for entry in (b"a", b"c", b"e"):
        [error] = callers[entry][1]
        assert isinstance(error, StorageError)
        assert "waiting for the commit" in str(error)


def test_a_caller_released_as_it_gives_up_gets_its_outcome_and_passes_on_once() -> None:
    """The hand-over between a releaser and a caller whose wait just timed out, in both orders:
    the next caller is woken exactly once either way."""
    released_first, released_after = _Pending(AppendRequest(b"x")), _Pending(AppendRequest(b"y"))
    next_of_first, next_of_after = _Pending(AppendRequest(b"x2")), _Pending(AppendRequest(b"y2"))
    released_first.next, released_after.next = next_of_first, next_of_after

    released_first.wake()  # not abandoned yet: the caller itself passes on
    assert released_first.give_up() is True
    assert next_of_first.done.acquire(blocking=False)

    assert released_after.give_up() is False  # abandoned: whoever releases it passes on
    released_after.wake()
    assert next_of_after.done.acquire(blocking=False)

    released_first.pass_on()  # a second pass-on is refused: the next caller is not released again
    released_after.pass_on()
    assert not next_of_first.done.acquire(blocking=False)
    assert not next_of_after.done.acquire(blocking=False)

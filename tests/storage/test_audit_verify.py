"""`audit verify` finds tampering (naming the entry) and `audit export` files verify with nothing but
RFC 9162 and the log key; on every storage backend."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from veilgate.audit import LogVerifier
from veilgate.errors import ConfigurationError, ProofInvalid
from veilgate_server.audit import Checkpointer
from veilgate_server.audit_tools import _verify_in_one_pass, _verify_in_pieces, export_log, verify_log
from veilgate_server.core.merkle import Frontier
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.storage import Store
from veilgate_server.storage.log import AppendRequest, StoredCheckpoint

SIGNER = NoteSigner.generate("veilgate.test/log")
VERIFIER = LogVerifier(SIGNER.verifier_key_string())


def _grow(store: Store, sizes: list[int]) -> Checkpointer:
    """Append entries in batches, signing a checkpoint after each batch."""
    checkpointer = Checkpointer(store, SIGNER)
    done = 0
    for size in sizes:
        store.log.append_batch(
            [AppendRequest(entry=f'{{"n":{i}}}'.encode(), subject_citizen_id=None) for i in range(done, size)]
        )
        checkpointer.sign_latest()
        done = size
    return checkpointer


def _sql(store: Store, statement: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_a_checkpointer_that_loses_the_race_to_a_larger_tree_returns_the_larger(store: Store) -> None:
    """Two server processes sign the same growing log: the one that signed the smaller tree finds a
    larger checkpoint stored first. That is no fork: it returns the stored one and raises nothing."""
    other = _grow(store, [3])
    raced: list[int] = []

    def racing_clock() -> float:  # runs after signing, just before the checkpoint is stored
        if not raced:
            store.log.append_batch([AppendRequest(entry=b'{"n":"late"}', subject_citizen_id=None)])
            raced.append(other.sign_latest().tree_size)  # type: ignore[union-attr]
        return 1_700_000_000.0

    store.log.append_batch([AppendRequest(entry=b'{"n":3}', subject_citizen_id=None)])
    latest = Checkpointer(store, SIGNER, clock=racing_clock).sign_latest()
    assert raced == [5]
    assert latest is not None
    assert latest.tree_size == 5
    assert [c.tree_size for c in store.log.checkpoints()] == [3, 5]
    assert verify_log(store, VERIFIER).checkpoints == 2


def test_an_untouched_log_verifies(store: Store) -> None:
    _grow(store, [1, 5, 21, 40])
    summary = verify_log(store, VERIFIER)
    assert (summary.entries, summary.checkpoints) == (40, 4)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("UPDATE log_entries SET entry = :x WHERE idx = 13", "entry 13 was changed"),
        ("DELETE FROM log_entries WHERE idx = 17", "entry 17 is missing"),
        ("SWAP 6 7", "entry 6 was changed"),
        ("INSERT 40", "entry 40 was inserted outside the log, whose size is 40"),
        ("INSERT 45", "entry 45 was inserted outside the log, whose size is 40"),
        ("REHASH 22", "entry 22 was changed"),
        # SQLite keeps text in a BLOB column as text; PostgreSQL casts it to bytes.
        ("UPDATE log_entries SET entry = 'hello' WHERE idx = 13", "entry 13 was changed"),
    ],
)
def test_tampering_is_found_and_named(store: Store, tamper: str, message: str) -> None:
    _grow(store, [10, 33, 40])
    if tamper.startswith("SWAP"):
        a, b = (int(x) for x in tamper.split()[1:])
        rows = {i: store.log.entries(i, 1)[0].entry for i in (a, b)}
        _sql(store, "UPDATE log_entries SET entry = :e WHERE idx = :i", e=rows[b], i=a)
        _sql(store, "UPDATE log_entries SET entry = :e WHERE idx = :i", e=rows[a], i=b)
    elif tamper.startswith("INSERT"):
        _sql(
            store,
            "INSERT INTO log_entries (idx, entry, leaf_hash, created_at) VALUES (:i, :e, :h, :t)",
            i=int(tamper.split()[1]),
            e=b"{}",
            h=hashlib.sha256(b"\0{}").digest(),
            t=store.log.entries(0, 1)[0].created_at,
        )
    elif tamper.startswith("REHASH"):
        # A careful forger changes the entry and its leaf hash together: the stored subtree and the
        # signed checkpoints still give it away.
        index = int(tamper.split()[1])
        forged = b'{"n":"forged"}'
        _sql(
            store,
            "UPDATE log_entries SET entry = :e, leaf_hash = :h WHERE idx = :i",
            e=forged,
            h=hashlib.sha256(b"\0" + forged).digest(),
            i=index,
        )
    else:
        _sql(store, tamper, x=b'{"n":"tampered"}')
    with pytest.raises(ProofInvalid, match=message):
        verify_log(store, VERIFIER)
    with pytest.raises(ProofInvalid, match=message):  # found in pieces, then named by the one pass
        verify_log(store, VERIFIER, piece=4)
    if not tamper.startswith("INSERT"):  # those are refused before any entry is read
        for piece in (2, 4, 8, 16):
            assert _verify_in_pieces(store, _checkpoints(store), 40, piece, 1) is None


def _checkpoints(store: Store) -> dict[int, StoredCheckpoint]:
    return {c.tree_size: c for c in store.log.checkpoints()}


def test_a_forger_who_rewrites_every_stored_hash_is_caught_by_the_checkpoints(store: Store) -> None:
    """An entry changed with its leaf hash and every stored subtree over it: nothing stored disagrees
    with the entries any more but the signed checkpoints after it, in pieces as in one pass."""
    _grow(store, [10, 33, 40])
    forged = {i: store.log.entries(i, 1)[0].entry for i in range(40)}
    forged[5] = b'{"n":"forged"}'
    frontier = Frontier()
    for i in range(40):
        leaf = hashlib.sha256(b"\0" + forged[i]).digest()
        _sql(store, "UPDATE log_entries SET entry = :e, leaf_hash = :h WHERE idx = :i", e=forged[i], h=leaf, i=i)
        for subtree in frontier.append(leaf)[1:]:
            _sql(
                store,
                "UPDATE log_subtrees SET hash = :h WHERE level = :l AND idx = :i",
                h=subtree.hash,
                l=subtree.level,
                i=subtree.index,
            )
    with pytest.raises(ProofInvalid, match="the checkpoint at size 10 does not match"):
        verify_log(store, VERIFIER)
    with pytest.raises(ProofInvalid, match="the checkpoint at size 10 does not match"):
        verify_log(store, VERIFIER, piece=8)
    for piece in (2, 4, 8, 16):
        assert _verify_in_pieces(store, _checkpoints(store), 40, piece, 1) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pieces_verify_any_log_as_the_one_pass_does(built_log: Store, data: st.DataObject) -> None:
    """Any prefix of a log, any piece size and any set of checkpoints: the pieces find it whole and
    count the same stored subtrees as the one pass (so they checked the same ones)."""
    store = built_log
    size = data.draw(st.integers(2, 100), label="size")
    piece = 1 << data.draw(st.integers(1, 7), label="log2(piece)")
    every = _checkpoints(store)
    chosen = data.draw(st.sets(st.integers(0, size)), label="checkpoints")
    checkpoints = {s: every[s] for s in chosen if s in every}
    one_pass = _verify_in_one_pass(store, checkpoints, size)
    in_pieces = _verify_in_pieces(store, checkpoints, size, piece, 1)
    assert in_pieces is not None
    assert (in_pieces.entries, in_pieces.checkpoints, in_pieces.subtrees) == (
        one_pass.entries,
        one_pass.checkpoints,
        one_pass.subtrees,
    )
    assert in_pieces.pieces == -(-size // piece)


@pytest.fixture
def built_log(store: Store) -> Store:
    """100 entries with a signed checkpoint at every size."""
    _grow(store, list(range(1, 101)))
    return store


def test_a_long_log_is_verified_in_pieces_by_several_processes(store: Store) -> None:
    _grow(store, [10, 33, 64, 70])
    summary = verify_log(store, VERIFIER, workers=2, piece=16)
    assert (summary.workers, summary.pieces) == (2, 5)
    one_pass = verify_log(store, VERIFIER)
    assert (summary.entries, summary.checkpoints, summary.subtrees) == (70, 4, one_pass.subtrees)
    assert (one_pass.workers, one_pass.pieces) == (1, 0)
    _sql(store, "UPDATE log_entries SET entry = :x WHERE idx = 50", x=b'{"n":"tampered"}')
    with pytest.raises(ProofInvalid, match="entry 50 was changed"):
        verify_log(store, VERIFIER, workers=2, piece=16)


def test_verify_refuses_a_piece_or_a_worker_count_it_cannot_use(store: Store) -> None:
    _grow(store, [8])
    with pytest.raises(ValueError, match="power of two"):
        verify_log(store, VERIFIER, piece=12)
    with pytest.raises(ConfigurationError, match="workers must be 1 to 16"):
        verify_log(store, VERIFIER, workers=0)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("UPDATE log_subtrees SET hash = :x WHERE level = 2 AND idx = 3", "the stored hash of entries 12..15 differs"),
        ("DELETE FROM log_subtrees WHERE level = 1 AND idx = 9", "the stored hash of entries 18..19 differs"),
        ("UPDATE log_subtrees SET hash = :x WHERE level = 5 AND idx = 0", "the stored hash of entries 0..31 differs"),
    ],
)
def test_a_stored_subtree_changed_alone_is_found(store: Store, tamper: str, message: str) -> None:
    """Entries and checkpoints untouched, one stored subtree hash changed or gone: the proofs served
    from it would be wrong, so the log does not verify, in pieces (inside one or above them) or not."""
    _grow(store, [10, 33, 40])
    _sql(store, tamper, x=b"\1" * 32)
    with pytest.raises(ProofInvalid, match=message):
        verify_log(store, VERIFIER)
    with pytest.raises(ProofInvalid, match=message):
        verify_log(store, VERIFIER, piece=4)
    for piece in (2, 4, 8, 16):
        assert _verify_in_pieces(store, _checkpoints(store), 40, piece, 1) is None


def test_a_checkpoint_edited_in_the_store_is_found(store: Store) -> None:
    _grow(store, [8, 16])
    _sql(store, "UPDATE log_checkpoints SET root_hash = :r WHERE tree_size = 8", r=b"\1" * 32)
    with pytest.raises(ProofInvalid, match="size 8 differs from its signed note"):
        verify_log(store, VERIFIER)


def test_a_checkpoint_by_another_key_is_refused(store: Store) -> None:
    _grow(store, [8])
    with pytest.raises(ProofInvalid, match="signature"):
        verify_log(store, LogVerifier(NoteSigner.generate("veilgate.test/log").verifier_key_string()))


def _rfc9162_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 9162 §2.1.1, independent of the project's code."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\0" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\1" + _rfc9162_root(leaves[:k]) + _rfc9162_root(leaves[k:])).digest()


def test_export_verifies_offline_with_only_rfc9162_and_the_key(store: Store, tmp_path: Path) -> None:
    checkpointer = _grow(store, [3, 27])
    store.log.append_batch([AppendRequest(entry=b'{"n":"late"}', subject_citizen_id=None)])  # not yet signed
    summary = export_log(store, checkpointer, tmp_path / "export")
    assert summary.tree_size == summary.entries == 28  # export signs a checkpoint over everything
    lines = (tmp_path / "export" / "entries.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["index"] for r in records] == list(range(28))
    leaves = [base64.b64decode(r["leaf"]) for r in records]
    note = (tmp_path / "export" / "checkpoint").read_text()
    vkey = (tmp_path / "export" / "log.vkey").read_text().strip()
    checkpoint = LogVerifier(vkey).checkpoint(note)
    assert checkpoint.tree_size == 28
    assert checkpoint.root_hash == _rfc9162_root(leaves)
    body = note.split("\n\n")[0].split("\n")
    assert body == ["veilgate.test/log", "28", base64.b64encode(_rfc9162_root(leaves)).decode()]


def test_periodic_signers_of_several_processes_sign_about_one_checkpoint_an_interval(store: Store) -> None:
    """Two processes' periodic signers, half an interval apart in phase: between them
    one checkpoint an interval, not one each."""
    now = [1_700_000_000.0]

    def clock() -> float:
        return now[0]

    first = Checkpointer(store, SIGNER, interval=1.0, clock=clock)
    second = Checkpointer(store, SIGNER, interval=1.0, clock=clock)
    signed = []
    for step in range(8):  # every half interval, the two signers' rounds alternate; the log grows
        store.log.append_batch([AppendRequest(entry=f'{{"n":{step}}}'.encode(), subject_citizen_id=None)])
        checkpointer = first if step % 2 == 0 else second
        latest = checkpointer.sign_if_due()
        assert latest is not None
        signed.append(latest.tree_size)
        now[0] += 0.5
    assert signed == [1, 1, 3, 3, 5, 5, 7, 7]
    assert [c.tree_size for c in store.log.checkpoints()] == [1, 3, 5, 7]
    # On demand, a checkpoint is still signed at once: a citizen's receipt must be covered now.
    assert first.covering(8) is not None
    assert store.log.latest_checkpoint().tree_size == 8  # type: ignore[union-attr]


def test_a_live_log_verifies_while_it_grows(store: Store) -> None:
    """The gateway appends and signs while an operator verifies: what is appended after the
    verifier read the log's size is not an entry 'inserted outside the log'."""
    checkpointer = _grow(store, [20])
    stop = threading.Event()
    appended = [0]

    def append() -> None:
        while not stop.is_set():
            store.log.append_batch([AppendRequest(entry=b'{"n":"live"}', subject_citizen_id=None)] * 3)
            checkpointer.sign_latest()
            appended[0] += 3

    writer = threading.Thread(target=append)
    writer.start()
    try:
        for _ in range(20):
            verify_log(store, VERIFIER)
    finally:
        stop.set()
        writer.join()
    assert appended[0] > 0
    assert verify_log(store, VERIFIER).entries == 20 + appended[0]

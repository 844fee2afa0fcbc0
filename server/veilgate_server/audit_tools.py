"""Operator tools over the stored audit log: export it for anyone to verify, and verify it here.

``export`` writes three files that any RFC 9162 implementation can check without Veilgate::

    entries.jsonl   {"index": i, "leaf": base64(the exact entry bytes hashed into leaf i)} per line
    checkpoint      the latest signed checkpoint (C2SP signed-note), verbatim
    log.vkey        the log's verifier key, Go sumdb/note format (name+hash+base64key)

``verify`` recomputes the whole tree from the stored entry bytes and checks, in one pass: indices are
dense; each stored leaf hash matches its entry; each stored subtree hash matches the recomputed one;
every stored checkpoint is signed by the log key and commits to the recomputed root at its size (so
consecutive checkpoints are consistent). The first failure names the entry index where the log
stops matching.

A long log is verified in pieces by several processes at once (``workers``): each piece is an
aligned run of ``2**m`` entries, whose subtrees up to level ``m`` lie wholly inside it, so a worker
checks its entries and those subtrees from its own reads, and returns the piece's root and the right
edge of every checkpoint inside it. This process then checks the subtrees above level ``m`` and
every checkpoint from those. Any difference found that way is looked for again by the one-pass
verification, which names where the log stops matching as it always has.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from veilgate.audit import LogVerifier
from veilgate.errors import ConfigurationError, ProofInvalid, VeilgateError
from veilgate.merkle import Hash, leaf_hash
from veilgate_server.audit import Checkpointer
from veilgate_server.core.merkle import Frontier, SubtreeKey, root_over
from veilgate_server.storage import Store
from veilgate_server.storage.log import StoredCheckpoint

__all__ = ["ExportSummary", "VerifySummary", "default_workers", "export_log", "verify_log"]

PAGE = 4096
# Entries per piece at least, so that a log is split only from 2 * MIN_PIECE entries on. Starting
# the worker processes (each imports the store's code and opens a connection) costs about 1.5 s on a
# slow 2-CPU machine, where one pass takes about 15 µs an entry: measured there, 100k entries took
# 1.6 s in one pass and 2.3 s in pieces, 200k 3.3-3.6 and 2.8 s, 1M 14.9-16.6 and 7.5-8.3 s.
MIN_PIECE = 1 << 17
MAX_WORKERS = 16


@dataclass(frozen=True, slots=True)
class ExportSummary:
    entries: int
    tree_size: int
    directory: Path


@dataclass(frozen=True, slots=True)
class VerifySummary:
    entries: int
    checkpoints: int
    subtrees: int
    workers: int = 1
    """How many processes verified the entries (1: this one alone)."""
    pieces: int = 0
    """How many pieces the entries were verified in (0: in one pass)."""


def _pages(store: Store, size: int) -> Iterator[list[tuple[int, bytes, bytes]]]:
    """``(index, entry, leaf_hash)`` rows of the first ``size`` entries, a page at a time."""
    start = 0
    while start < size:
        page = store.log.hashed_entries(start, min(PAGE, size - start))
        if not page:
            raise ProofInvalid(f"entry {start} is missing")
        yield page
        start = page[-1][0] + 1


def export_log(store: Store, checkpointer: Checkpointer, out: Path) -> ExportSummary:
    """Sign a checkpoint over everything stored, then write the entries it covers and the key."""
    checkpoint = checkpointer.sign_latest()
    if checkpoint is None:
        raise ConfigurationError("the audit log is empty; there is nothing to export")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".entries.jsonl.tmp"
        count = 0
        with tmp.open("w", encoding="ascii") as f:
            for page in _pages(store, checkpoint.tree_size):
                for index, entry, _ in page:
                    f.write(f'{{"index": {index}, "leaf": "{base64.b64encode(entry).decode()}"}}\n')
                    count += 1
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(out / "entries.jsonl")
        (out / "checkpoint").write_text(checkpoint.note, encoding="utf-8")
        (out / "log.vkey").write_text(checkpointer.verifier_key + "\n", encoding="ascii")
    except OSError as e:
        raise ConfigurationError(f"cannot write the export to {out}: {e.strerror}") from e
    return ExportSummary(entries=count, tree_size=checkpoint.tree_size, directory=out)


def verify_log(store: Store, verifier: LogVerifier, *, workers: int = 1, piece: int | None = None) -> VerifySummary:
    """Recompute the tree from the stored entries and check every stored hash and checkpoint.

    With ``workers`` above 1, a log of at least two pieces is verified in pieces by that many
    processes (see the module's docstring). ``piece`` sets the entries per piece, a power of two (by
    default, about four pieces a worker, at least :data:`MIN_PIECE`); given with one worker, the
    pieces are verified one after another in this process, as the tests do."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigurationError(f"workers must be 1 to {MAX_WORKERS}")
    if piece is not None and (piece < 2 or piece & (piece - 1)):
        raise ValueError("piece must be a power of two, at least 2")
    log = store.log
    # The gateway may be appending meanwhile: the checkpoints first, then the size (which only
    # grows) with any stray entry in the same snapshot. What is appended after is not looked at.
    checkpoints = {c.tree_size: c for c in log.checkpoints()}
    size, stray = log.size_and_first_outside()
    if stray is not None:
        raise ProofInvalid(f"entry {stray} was inserted outside the log, whose size is {size}")
    for checkpoint in checkpoints.values():
        signed = verifier.checkpoint(checkpoint.note)  # signature and origin
        if (signed.tree_size, signed.root_hash) != (checkpoint.tree_size, checkpoint.root_hash):
            raise ProofInvalid(f"the stored checkpoint at size {checkpoint.tree_size} differs from its signed note")
        if checkpoint.tree_size > size:
            raise ProofInvalid(f"a checkpoint covers {checkpoint.tree_size} entries but the log holds {size}")

    if piece is None and workers > 1:
        piece = _piece_size(size, workers)
    if piece is not None and size >= 2 * piece:
        summary = _verify_in_pieces(store, checkpoints, size, piece, workers)
        if summary is not None:
            return summary
        # A difference: the one pass below finds the first and names where the log stops matching.
    return _verify_in_one_pass(store, checkpoints, size)


def _verify_in_one_pass(store: Store, checkpoints: Mapping[int, StoredCheckpoint], size: int) -> VerifySummary:
    frontier = Frontier()
    subtrees_checked = 0
    for page in _pages(store, size):
        completed: dict[SubtreeKey, tuple[bytes, int]] = {}
        unmatched_checkpoint: int | None = None
        for index, entry, stored_leaf in page:
            if index != frontier.size:
                raise ProofInvalid(f"entry {frontier.size} is missing")
            if not (isinstance(entry, bytes) and isinstance(stored_leaf, bytes)):  # SQLite keeps any type
                raise ProofInvalid(f"entry {index} was changed: it is no longer stored as bytes")
            recomputed = leaf_hash(entry)
            if recomputed != stored_leaf:
                raise ProofInvalid(f"entry {index} was changed: it no longer matches its leaf hash")
            for subtree in frontier.append(recomputed)[1:]:
                first_leaf = subtree.index << subtree.level
                completed[(subtree.level, subtree.index)] = (subtree.hash, first_leaf)
            stored_checkpoint = checkpoints.get(frontier.size)
            if stored_checkpoint is not None and stored_checkpoint.root_hash != frontier.root():
                unmatched_checkpoint = unmatched_checkpoint or frontier.size
        # Stored subtree hashes name the changed entry precisely; check them before the checkpoints,
        # which only say that something before their size changed.
        stored = _stored_subtrees(store, completed)
        mismatched = [(key[0], first) for key, (expected, first) in completed.items() if stored.get(key) != expected]
        if mismatched:
            level, first_leaf = min(mismatched)  # the smallest differing subtree is the most precise
            raise ProofInvalid(
                f"entry {first_leaf} was changed: the stored hash of entries "
                f"{first_leaf}..{first_leaf + (1 << level) - 1} differs"
            )
        if unmatched_checkpoint is not None:
            raise ProofInvalid(
                f"the checkpoint at size {unmatched_checkpoint} does not match the entries "
                f"(entries before {unmatched_checkpoint} were changed)"
            )
        subtrees_checked += len(completed)
    return VerifySummary(entries=frontier.size, checkpoints=len(checkpoints), subtrees=subtrees_checked)


# --- in pieces --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Piece:
    """What one piece held, when it matched: how many stored subtrees were checked in it, its root
    (the level-``m`` subtree's hash when the piece is whole), and, for each checkpoint size inside
    it, the right edge of the piece's own entries up to that size, largest subtree first."""

    subtrees: int
    root: Hash
    edges: dict[int, tuple[Hash, ...]]


def default_workers() -> int:
    """The processes ``audit verify`` uses unless told: one per CPU this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_WORKERS))


def _piece_size(size: int, workers: int) -> int:
    """About four pieces a worker (the last is often short), each a power of two of entries."""
    target = max(MIN_PIECE, size // (4 * workers))
    return 1 << (target.bit_length() - 1)


def _stored_subtrees(store: Store, keys: Iterable[SubtreeKey]) -> dict[SubtreeKey, bytes]:
    """The stored hashes of the subtrees ``keys`` (those stored): one index range read per level."""
    by_level: dict[int, list[int]] = {}
    for level, index in keys:
        by_level.setdefault(level, []).append(index)
    stored: dict[SubtreeKey, bytes] = {}
    for level, indices in by_level.items():
        stored.update(store.log.subtree_range(level, min(indices), max(indices) + 1))
    return stored


def _stored_match(store: Store, completed: Mapping[SubtreeKey, Hash]) -> bool:
    """Whether every subtree in ``completed`` is stored with the recomputed hash."""
    stored = _stored_subtrees(store, completed)
    return all(stored.get(key) == expected for key, expected in completed.items())


def _verify_piece(store: Store, job: tuple[int, int, tuple[int, ...]]) -> _Piece | None:
    """Check the entries ``start <= i < end`` of ``job = (start, end, checkpoint_sizes)``: dense, each
    matching its leaf hash, and every stored subtree that lies in them; None at the first difference.
    ``start`` is a multiple of the piece size (a power of two), which ``end - start`` never exceeds,
    so a subtree the piece completes at its own level ``l`` and index ``i`` is the log's subtree
    ``(l, i + start >> l)``."""
    start, end, sizes = job
    checkpoint_sizes = frozenset(sizes)
    log = store.log
    frontier = Frontier()
    edges: dict[int, tuple[Hash, ...]] = {}
    subtrees = 0
    expected = start
    while expected < end:
        page = log.hashed_entries(expected, min(PAGE, end - expected))
        if not page:
            return None  # an entry is missing
        completed: dict[SubtreeKey, Hash] = {}
        for index, entry, stored_leaf in page:
            if index != expected or not (isinstance(entry, bytes) and isinstance(stored_leaf, bytes)):
                return None
            recomputed = leaf_hash(entry)
            if recomputed != stored_leaf:
                return None
            for subtree in frontier.append(recomputed)[1:]:
                completed[(subtree.level, subtree.index + (start >> subtree.level))] = subtree.hash
            expected += 1
            if expected in checkpoint_sizes:
                edges[expected] = tuple(subtree.hash for subtree in frontier.edge)
        if not _stored_match(store, completed):
            return None
        subtrees += len(completed)
    return _Piece(subtrees=subtrees, root=frontier.root(), edges=edges)


def _verify_in_pieces(
    store: Store, checkpoints: Mapping[int, StoredCheckpoint], size: int, piece: int, workers: int
) -> VerifySummary | None:
    """The whole log in pieces of ``piece`` entries, by ``workers`` processes (this one alone for 1);
    None when anything differs. The pieces' roots make the tree above them: its subtrees are checked
    against the stored ones, and each checkpoint's root is the edge before its piece followed by
    the piece's own edge at its size."""
    bounds = [(start, min(start + piece, size)) for start in range(0, size, piece)]
    jobs = [(start, end, tuple(s for s in checkpoints if start < s <= end)) for start, end in bounds]
    level = piece.bit_length() - 1
    above = Frontier()  # over the whole pieces' roots: its level v is the log's level level + v
    completed: dict[SubtreeKey, Hash] = {}
    subtrees = 0
    differs = False
    with _piece_runner(store, workers) as (run, used):
        # Every piece's result is taken, even after one differs: a pool stopped while it still has
        # pieces to hand out can hang for good in its own shutdown (seen under load).
        for (start, end, inside), found in zip(jobs, run(jobs), strict=True):
            if differs or found is None:
                differs = True
                continue
            before = tuple(subtree.hash for subtree in above.edge)
            # A whole piece after a prefix ending at its level folds into their parent (see root_over).
            if any(root_over(before + found.edges[s]) != checkpoints[s].root_hash for s in inside):
                differs = True
                continue
            subtrees += found.subtrees
            if end - start == piece:
                for subtree in above.append(found.root)[1:]:
                    completed[(level + subtree.level, subtree.index)] = subtree.hash
    if differs or not _stored_match(store, completed):
        return None
    return VerifySummary(
        entries=size,
        checkpoints=len(checkpoints),
        subtrees=subtrees + len(completed),
        workers=used,
        pieces=len(jobs),
    )


_Run = Callable[[list[tuple[int, int, tuple[int, ...]]]], Iterable[_Piece | None]]


@contextlib.contextmanager
def _piece_runner(store: Store, workers: int) -> Iterator[tuple[_Run, int]]:
    """Something that verifies pieces in order, and how many processes it uses: this process for one
    worker (or a database only it can see), else a pool of processes each with its own connection."""
    url = store.engine.url
    if workers == 1 or (url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")):
        yield functools.partial(map, functools.partial(_verify_piece, store)), 1
        return
    context = multiprocessing.get_context("spawn")
    # The store is opened by each worker's first piece, not by the pool's initializer: a pool whose
    # initializer fails starts new workers for ever, and the verification would never end.
    with context.Pool(workers) as pool:
        database_url = url.render_as_string(hide_password=False)
        yield functools.partial(pool.imap, functools.partial(_verify_piece_in_worker, database_url)), workers


_worker_store: Store | None = None  # a worker process's own connection to the log, once opened


def _verify_piece_in_worker(database_url: str, job: tuple[int, int, tuple[int, ...]]) -> _Piece | None:
    global _worker_store  # one store per worker process, opened by its first piece
    try:
        if _worker_store is None:
            _worker_store = Store.open(database_url, migrate=False)
        return _verify_piece(_worker_store, job)
    except VeilgateError:  # the store could not be read: the one pass meets that again and says what it was
        return None

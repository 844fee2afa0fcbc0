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
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from veilgate.audit import LogVerifier
from veilgate.errors import ConfigurationError, ProofInvalid
from veilgate.merkle import leaf_hash
from veilgate_server.audit import Checkpointer
from veilgate_server.core.merkle import Frontier, SubtreeKey
from veilgate_server.storage import Store

__all__ = ["ExportSummary", "VerifySummary", "export_log", "verify_log"]

PAGE = 4096


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


def verify_log(store: Store, verifier: LogVerifier) -> VerifySummary:
    """Recompute the tree from the stored entries and check every stored hash and checkpoint."""
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
        by_level: dict[int, list[int]] = {}
        for level, index in completed:
            by_level.setdefault(level, []).append(index)
        stored: dict[SubtreeKey, bytes] = {}
        for level, indices in by_level.items():  # the page's subtrees: one index range per level
            stored.update(log.subtree_range(level, min(indices), max(indices) + 1))
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

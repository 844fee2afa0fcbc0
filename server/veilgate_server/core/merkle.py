"""Proof generation and incremental roots for the audit log, from stored subtree hashes (RFC 9162 §2.1).

The store keeps, for every *complete, aligned* subtree, its hash::

    subtree(level, index) = MTH(leaves[index * 2**level : (index + 1) * 2**level])

with level 0 the leaf hashes. Such a subtree never changes once its last leaf is appended, so it
can be written once, in the same transaction as that leaf, and read back forever. :class:`Frontier`
says which subtrees each append completes.

Every node of an RFC 9162 proof, and the root itself, is the MTH of a range ``[start, end)`` of
leaves with ``start`` aligned to a power of two at least ``end - start`` (the recursion in the RFC's
PATH and SUBPROOF only ever splits off the largest power of two on the left). The MTH of such a range
is its covering complete subtrees (:func:`covering_subtrees`: the binary decomposition of its size)
combined right to left. In a proof, every range is a complete subtree -- one stored hash -- except at
most one, the sibling that reaches the right edge of the tree, which is covered by at most log2(n)
complete subtrees. So a proof of ``p <= ceil(log2 n) + 1`` nodes needs at most ``p + log2(n)`` stored
hashes, and this module asks for all of them in **one** :meth:`SubtreeReader.subtree_hashes` call,
which the store can answer with one indexed query. Nothing is rehashed from the log's entries.

Pure: no I/O except through the reader passed in, no clock; only :mod:`hashlib` (via the SDK's
verification module, whose hashing and error types are shared so that the two can never disagree).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from veilgate.errors import InternalError, RequestInvalid
from veilgate.merkle import EMPTY_ROOT, HASH_SIZE, Hash, node_hash

__all__ = [
    "CompletedSubtree",
    "Frontier",
    "SubtreeKey",
    "SubtreeReader",
    "consistency_proof",
    "covering_subtrees",
    "inclusion_proof",
    "proof_keys_for_consistency",
    "proof_keys_for_inclusion",
    "root_keys",
    "root_of",
    "root_over",
]

SubtreeKey = tuple[int, int]
"""``(level, index)`` of a complete aligned subtree: leaves ``[index << level, (index + 1) << level)``."""

_Range = tuple[int, int]


class SubtreeReader(Protocol):
    """What proof generation needs from the store: a batch read of complete subtree hashes."""

    def subtree_hashes(self, keys: Sequence[SubtreeKey]) -> Mapping[SubtreeKey, bytes]:
        """The stored hash of each requested ``(level, index)``; every key must be present."""
        ...


@dataclass(frozen=True, slots=True)
class CompletedSubtree:
    """A complete aligned subtree ``(level, index)`` that an append finished; persist it with the leaf."""

    level: int
    index: int
    hash: Hash


# --- decomposition ----------------------------------------------------------------------------------


def covering_subtrees(start: int, end: int) -> list[SubtreeKey]:
    """Decompose ``[start, end)`` into maximal aligned complete subtrees, left to right.

    Greedy: at each position take the largest subtree that is aligned there and does not pass
    ``end``. The result has at most ``2 * log2(end - start) + 2`` keys, and at most
    ``log2(end - start) + 1`` when ``start`` is aligned to a power of two at least ``end - start`` (the
    ranges of proofs and roots), where it is the binary decomposition of the size in decreasing order.
    """
    _check_int(start, "start")
    _check_int(end, "end")
    if not 0 <= start <= end:
        raise RequestInvalid(f"[{start}, {end}) is not a range of leaves")
    keys: list[SubtreeKey] = []
    while start < end:
        fits = (end - start).bit_length() - 1
        level = min((start & -start).bit_length() - 1, fits) if start else fits
        keys.append((level, start >> level))
        start += 1 << level
    return keys


def root_keys(tree_size: int) -> list[SubtreeKey]:
    """The complete subtrees whose hashes, combined right to left, give the root of ``tree_size`` leaves.

    One per 1 bit of ``tree_size``, largest first: RFC 9162's MTH splits off the largest power of two
    on the left, so the root is ``node(s0, node(s1, ... node(s_{k-2}, s_{k-1})))``.
    """
    _check_size(tree_size, "tree size")
    return covering_subtrees(0, tree_size)


def _inclusion_ranges(index: int, tree_size: int) -> list[_Range]:
    """The leaf range of each node of PATH(index, D[0:tree_size]) (RFC 9162 §2.1.3.1), in proof order.

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])   if m < k
                  = PATH(m - k, D[k:n]) : MTH(D[0:k]) if m >= k
    unrolled from the top; the recursion's nodes come out root-first, so they are reversed.
    """
    lo, hi, m = 0, tree_size, index
    top_down: list[_Range] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            m -= k
            lo += k
    top_down.reverse()
    return top_down


def _consistency_ranges(first: int, second: int) -> list[_Range]:
    """The leaf range of each node of PROOF(first, D[0:second]) (RFC 9162 §2.1.4.1), in proof order.

    SUBPROOF(m, D[n], b) = []                                    if m == n and b
                         = [MTH(D[0:m])]                         if m == n and not b
                         = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])  if m <= k
                         = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  if m > k
    """
    if first in (0, second):
        return []
    lo, hi, m, b = 0, second, first, True
    top_down: list[_Range] = []
    while True:
        if m == hi - lo:
            if not b:
                top_down.append((lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            top_down.append((lo + k, hi))
            hi = lo + k
        else:
            top_down.append((lo, lo + k))
            m -= k
            lo += k
            b = False
    top_down.reverse()
    return top_down


def _keys_of(ranges: Iterable[_Range]) -> list[SubtreeKey]:
    keys: dict[SubtreeKey, None] = {}
    for start, end in ranges:
        keys.update(dict.fromkeys(covering_subtrees(start, end)))
    return list(keys)


def proof_keys_for_inclusion(index: int, tree_size: int) -> list[SubtreeKey]:
    """Every stored subtree the inclusion proof of leaf ``index`` in ``tree_size`` needs, no duplicates.

    At most ``2 * log2(tree_size) + 1`` keys (see the module docstring), so the store can fetch them
    in one query.
    """
    _check_index(index, tree_size)
    return _keys_of(_inclusion_ranges(index, tree_size))


def proof_keys_for_consistency(first: int, second: int) -> list[SubtreeKey]:
    """Every stored subtree the consistency proof between sizes ``first <= second`` needs."""
    _check_sizes(first, second)
    return _keys_of(_consistency_ranges(first, second))


# --- generation -------------------------------------------------------------------------------------


def root_of(tree_size: int, reader: SubtreeReader) -> Hash:
    """The root of the first ``tree_size`` leaves, from its ``popcount(tree_size)`` covering subtrees.

    One batch read of at most ``log2(tree_size) + 1`` hashes. Recomputing the root this way before
    signing a checkpoint checks the stored subtrees of the right edge, not the whole log: an audit of
    the whole log must rehash the entries.
    """
    keys = root_keys(tree_size)
    if not keys:
        return EMPTY_ROOT
    return _fold(keys, _fetch(reader, keys))


def inclusion_proof(index: int, tree_size: int, reader: SubtreeReader) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``tree_size`` leaves.

    One batch read of :func:`proof_keys_for_inclusion` (``<= 2 * log2(n) + 1`` hashes); the one node
    that reaches the right edge of the tree is combined from its covering subtrees here.
    """
    _check_index(index, tree_size)
    return _proof(_inclusion_ranges(index, tree_size), reader)


def consistency_proof(first: int, second: int, reader: SubtreeReader) -> list[bytes]:
    """The RFC 9162 consistency proof that the tree of ``first`` leaves is a prefix of that of ``second``.

    Empty when ``first`` is 0 or equal to ``second`` (nothing to prove). One batch read of
    :func:`proof_keys_for_consistency`, at most ``2 * log2(second) + 2`` hashes.
    """
    _check_sizes(first, second)
    return _proof(_consistency_ranges(first, second), reader)


def _proof(ranges: list[_Range], reader: SubtreeReader) -> list[bytes]:
    covers = [covering_subtrees(start, end) for start, end in ranges]
    keys = list(dict.fromkeys(key for cover in covers for key in cover))
    hashes = _fetch(reader, keys) if keys else {}
    return [_fold(cover, hashes) for cover in covers]


def _fetch(reader: SubtreeReader, keys: list[SubtreeKey]) -> Mapping[SubtreeKey, bytes]:
    hashes = reader.subtree_hashes(keys)
    for key in keys:
        value = hashes.get(key)
        if value is None:
            raise InternalError(f"the log store has no hash for subtree (level, index) = {key}")
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise InternalError(f"the log store's hash for subtree {key} is not {HASH_SIZE} bytes")
    return hashes


def _fold(cover: Sequence[SubtreeKey], hashes: Mapping[SubtreeKey, bytes]) -> Hash:
    """MTH of a range from its covering subtrees."""
    return root_over([hashes[key] for key in cover])


def root_over(subtrees: Sequence[bytes]) -> Hash:
    """MTH over complete subtrees given left to right, largest leftmost: combined right to left,
    because MTH splits off the largest power of two on the left (the empty-tree hash for none). Two
    rightmost neighbours of the same size fold into their parent, as the carry of an append would."""
    if not subtrees:
        return EMPTY_ROOT
    acc = subtrees[-1]
    for left in reversed(subtrees[:-1]):
        acc = node_hash(left, acc)
    return Hash(acc)


# --- incremental appends ----------------------------------------------------------------------------


class Frontier:
    """The right edge of the log: the complete subtrees of :func:`root_keys` for the current size.

    Appending a leaf adds a level-0 subtree and merges equal-level neighbours, exactly like binary
    addition of 1 to the size. Each merge completes an aligned subtree whose hash never changes again;
    :meth:`append` returns them (the leaf included) so that the store persists them in the same
    transaction as the entry. The state is ``popcount(size)`` hashes, so :meth:`from_subtrees` rebuilds
    it after a restart with one read of ``<= log2(size) + 1`` stored hashes.
    """

    __slots__ = ("_edge", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._edge: list[CompletedSubtree] = []  # levels strictly decreasing, left to right

    @classmethod
    def from_subtrees(cls, tree_size: int, reader: SubtreeReader) -> Frontier:
        """The frontier of a stored tree of ``tree_size`` leaves, from its ``root_keys`` hashes."""
        keys = root_keys(tree_size)
        hashes = _fetch(reader, keys) if keys else {}
        frontier = cls()
        frontier._size = tree_size
        frontier._edge = [CompletedSubtree(level, index, Hash(hashes[(level, index)])) for level, index in keys]
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def edge(self) -> tuple[CompletedSubtree, ...]:
        """The complete subtrees covering the tree, largest (leftmost) first."""
        return tuple(self._edge)

    def append(self, leaf_hash: bytes) -> list[CompletedSubtree]:
        """Append one leaf hash; return every subtree it completes, smallest (the leaf itself) first."""
        if not isinstance(leaf_hash, bytes) or len(leaf_hash) != HASH_SIZE:
            raise InternalError(f"a leaf hash must be {HASH_SIZE} bytes")
        node = CompletedSubtree(0, self._size, Hash(leaf_hash))
        completed = [node]
        while self._edge and self._edge[-1].level == node.level:
            left = self._edge.pop()
            node = CompletedSubtree(node.level + 1, left.index >> 1, node_hash(left.hash, node.hash))
            completed.append(node)
        self._edge.append(node)
        self._size += 1
        return completed

    def root(self) -> Hash:
        """The MTH of the leaves appended so far (the empty-tree hash for none)."""
        return root_over([subtree.hash for subtree in self._edge])


# --- checks -----------------------------------------------------------------------------------------


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_int(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestInvalid(f"{what} is not an integer")


def _check_size(tree_size: int, what: str) -> None:
    _check_int(tree_size, what)
    if tree_size < 0:
        raise RequestInvalid(f"{what} {tree_size} is negative")


def _check_index(index: int, tree_size: int) -> None:
    _check_int(index, "leaf index")
    _check_size(tree_size, "tree size")
    if not 0 <= index < tree_size:
        raise RequestInvalid(f"leaf index {index} is not in a tree of {tree_size} leaves")


def _check_sizes(first: int, second: int) -> None:
    _check_size(first, "first tree size")
    _check_size(second, "second tree size")
    if first > second:
        raise RequestInvalid(f"a tree of {first} leaves cannot be a prefix of one of {second}")

"""Verification of the audit log's Merkle tree (RFC 9162 §2.1), for citizens, auditors and the gateway.

The log is the Merkle Tree Hash (MTH) of its entries, with separate hash domains so that a leaf can
never be passed off as an interior node (second-preimage protection)::

    leaf_hash(e)    = SHA-256(0x00 || e)
    node_hash(l, r) = SHA-256(0x01 || l || r)
    MTH([])         = SHA-256("")
    MTH(D[0:n])     = node_hash(MTH(D[0:k]), MTH(D[k:n]))   k = largest power of two < n

Checks raise :class:`veilgate.errors.ProofInvalid` (re-exported here) and return nothing. Inputs
are parsed strictly: sizes and indices must be in range, every hash must be exactly 32 bytes, and a
proof must have exactly the number of nodes the algorithm consumes; a proof with a trailing or
missing node is rejected before any hashing.

A proof shows that a leaf (or an older tree) is part of *the tree with the given size and root*. It
can verify against more than one size, so the caller must take ``tree_size`` and ``root`` from a
checkpoint whose signature it has checked, never from the reply that carried the proof.

Pure: no I/O, no clock; only :mod:`hashlib`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import NewType

from veilgate.errors import ProofInvalid

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Hash",
    "ProofInvalid",
    "RootBuilder",
    "consistency_proof_size",
    "inclusion_proof_size",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

Hash = NewType("Hash", bytes)
"""A 32-byte SHA-256 tree hash (leaf, interior node or root)."""

HASH_SIZE = 32
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT = Hash(hashlib.sha256(b"").digest())
"""MTH of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1)."""


def leaf_hash(entry: bytes) -> Hash:
    """SHA-256(0x00 || entry): the hash of one log entry, exactly the bytes that were appended."""
    return Hash(hashlib.sha256(_LEAF_PREFIX + entry).digest())


def node_hash(left: bytes, right: bytes) -> Hash:
    """SHA-256(0x01 || left || right): an interior node over two child hashes."""
    return Hash(hashlib.sha256(_NODE_PREFIX + left + right).digest())


class RootBuilder:
    """MTH of a growing list of leaf hashes, in O(log n) memory: :func:`root_from_leaf_hashes`
    fed one leaf at a time, whose root can be read at any size (an export checked against an
    earlier checkpoint reads it at that checkpoint's size on the way).

    The leaves are folded left to right onto a stack of complete, power-of-two subtrees (the right
    edge of the tree, like :class:`veilgate_server.core.merkle.Frontier`): two subtrees of equal size
    merge at once. The stack holds the binary decomposition of ``size`` in decreasing sizes, and MTH
    combines it right to left, because MTH splits off the largest power of two on the left.
    """

    __slots__ = ("_stack", "size")

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (size, hash), sizes strictly decreasing
        self.size = 0

    def add(self, leaf_hash: bytes) -> None:
        _check_hash(leaf_hash, f"leaf hash {self.size}")
        size, node = 1, bytes(leaf_hash)
        while self._stack and self._stack[-1][0] == size:
            left_size, left = self._stack.pop()
            node = node_hash(left, node)
            size += left_size
        self._stack.append((size, node))
        self.size += 1

    def root(self) -> Hash:
        if not self._stack:
            return EMPTY_ROOT
        root = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            root = node_hash(left, root)
        return Hash(root)


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> Hash:
    """MTH over the given leaf hashes, in O(n) time and O(log n) extra memory (see :class:`RootBuilder`)."""
    builder = RootBuilder()
    for h in leaf_hashes:
        builder.add(h)
    return builder.root()


def inclusion_proof_size(index: int, tree_size: int) -> int:
    """Number of nodes in the RFC 9162 inclusion proof of leaf ``index`` in a tree of ``tree_size``.

    Leaf ``index`` and the last leaf ``tree_size - 1`` share the path above the highest bit in which
    they differ. Below it (``inner`` levels) every level contributes a sibling. Above it the path runs
    along the right edge, where a level contributes a (left) sibling only where ``index`` has a 1 bit:
    elsewhere the node has no right sibling in this tree and moves up unchanged.
    """
    _check_index(index, tree_size)
    inner = (index ^ (tree_size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_size(first_size: int, second_size: int) -> int:
    """Number of nodes in the RFC 9162 consistency proof between trees of the two sizes.

    The proof is the inclusion proof, in the larger tree, of the last complete subtree of the smaller
    one (level = trailing zeros of ``first_size``), preceded by that subtree's own hash unless the
    smaller tree *is* that subtree (``first_size`` a power of two: the verifier already has its root).
    """
    _check_sizes(first_size, second_size)
    if first_size in (0, second_size):
        return 0
    level = (first_size & -first_size).bit_length() - 1
    index = (first_size - 1) >> level
    last = (second_size - 1) >> level
    inner = (index ^ last).bit_length()
    own = 0 if first_size == 1 << level else 1
    return own + inner + (index >> inner).bit_count()


def verify_inclusion(*, leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` leaves with ``root``.

    RFC 9162 §2.1.3.2: walk from the leaf to the root, taking each proof node as the left sibling
    when the current node is a right child or the last node of its level (then skipping the levels
    where it has no sibling), and as the right sibling otherwise. The proof length is checked first.
    """
    _check_index(index, tree_size)
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    expected = inclusion_proof_size(index, tree_size)
    if len(proof) != expected:
        raise ProofInvalid(f"inclusion proof has {len(proof)} nodes, expected {expected}")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof node {i}")

    fn, sn = index, tree_size - 1
    r = bytes(leaf_hash)
    for p in proof:
        if sn == 0:
            raise ProofInvalid("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofInvalid("inclusion proof does not lead to the given root")


def verify_consistency(
    *, first_size: int, second_size: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``first_size`` with ``first_root`` is a prefix of the one of ``second_size``.

    RFC 9162 §2.1.4.2: from the proof, rebuild both roots at once: the nodes the two trees share
    (left siblings on the path of the smaller tree's last subtree) enter both, the nodes only the
    larger tree has (right siblings) enter the second root only. Equal sizes need an empty proof and
    equal roots; the empty tree is a prefix of every tree (empty proof, ``first_root`` the empty
    root). Anything but the exact proof length is rejected.
    """
    _check_sizes(first_size, second_size)
    _check_hash(first_root, "first root")
    _check_hash(second_root, "second root")
    expected = consistency_proof_size(first_size, second_size)
    if len(proof) != expected:
        raise ProofInvalid(f"consistency proof has {len(proof)} nodes, expected {expected}")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof node {i}")

    if first_size == 0:
        if first_root != EMPTY_ROOT:
            raise ProofInvalid("first root is not the root of the empty tree")
        return
    if first_size == second_size:
        if first_root != second_root:
            raise ProofInvalid("trees of the same size have different roots")
        return

    path = list(proof)
    if first_size & (first_size - 1) == 0:
        path.insert(0, bytes(first_root))
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(path[0])
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid("consistency proof is shorter than the path to the root")
    if fr != first_root:
        raise ProofInvalid("consistency proof does not lead to the first root")
    if sr != second_root:
        raise ProofInvalid("consistency proof does not lead to the second root")


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofInvalid(f"{what} is not a {HASH_SIZE}-byte hash")


def _check_index(index: int, tree_size: int) -> None:
    _check_int(index, "index")
    _check_int(tree_size, "tree size")
    if tree_size < 1:
        raise ProofInvalid("the empty tree has no leaves to prove")
    if not 0 <= index < tree_size:
        raise ProofInvalid(f"leaf index {index} is not in a tree of {tree_size} leaves")


def _check_sizes(first_size: int, second_size: int) -> None:
    _check_int(first_size, "first size")
    _check_int(second_size, "second size")
    if not 0 <= first_size <= second_size:
        raise ProofInvalid(f"tree of {first_size} leaves cannot be a prefix of one of {second_size}")


def _check_int(value: int, what: str) -> None:
    # bool is an int; a True index is a caller bug, not leaf 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofInvalid(f"{what} is not an integer")

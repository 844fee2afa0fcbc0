"""The audit log's Merkle tree: published vectors, an RFC reference model, and the stored-subtree engine.

Known answers come from the public transparency-dev/merkle test data (the RFC 6962 test tree also
used by certificate-transparency-go and trillian):

* leaf inputs, the hashes of every complete subtree and the roots for sizes 0..8:
  ``testonly/constants.go`` (``LeafInputs``, ``NodeHashes``, ``RootHashes``, ``EmptyRootHash``);
* inclusion and consistency proofs: ``proof/verify_test.go`` (``inclusionProofs``,
  ``consistencyProofs``; their leaf numbers are 1-based, converted to 0-based indices here).

Everything else is checked against ``_ref_*``: a deliberately naive, recursive transcription of
RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH) and §2.1.4.1 (PROOF/SUBPROOF) over lists of leaves, which
shares no code with the implementation beyond SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veilgate.errors import InternalError, RequestInvalid
from veilgate.merkle import (
    EMPTY_ROOT,
    ProofInvalid,
    consistency_proof_size,
    inclusion_proof_size,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from veilgate_server.core.merkle import (
    Frontier,
    SubtreeKey,
    consistency_proof,
    covering_subtrees,
    inclusion_proof,
    proof_keys_for_consistency,
    proof_keys_for_inclusion,
    root_keys,
    root_of,
)

# --- RFC 9162 reference model (recursive, straight from the definitions) ------------------------------


def _ref_mth(d: Sequence[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _ref_k(n)
    return hashlib.sha256(b"\x01" + _ref_mth(d[:k]) + _ref_mth(d[k:])).digest()


def _ref_k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _ref_k(n)
    if m < k:
        return [*_ref_path(m, d[:k]), _ref_mth(d[k:])]
    return [*_ref_path(m - k, d[k:]), _ref_mth(d[:k])]


def _ref_path_sides(m: int, n: int) -> list[str]:
    """Which side each PATH node is on ("L"/"R"): the shape a verifier reconstructs from (m, n)."""
    if n == 1:
        return []
    k = _ref_k(n)
    if m < k:
        return [*_ref_path_sides(m, k), "R"]
    return [*_ref_path_sides(m - k, n - k), "L"]


def _ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    return _ref_subproof(m, d, True)


def _ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_ref_mth(d)]
    k = _ref_k(n)
    if m <= k:
        return [*_ref_subproof(m, d[:k], b), _ref_mth(d[k:])]
    return [*_ref_subproof(m - k, d[k:], False), _ref_mth(d[:k])]


# --- published vectors (transparency-dev/merkle testonly/constants.go, proof/verify_test.go) ----------

LEAF_INPUTS = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]

ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]

NODE_HASHES: dict[SubtreeKey, bytes] = {
    (level, index): bytes.fromhex(h)
    for level, row in enumerate(
        [
            [
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
            ],
            [
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            ],
            [
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
            ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
        ]
    )
    for index, h in enumerate(row)
}


def _hx(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


# (index, tree_size, proof); verify_test.go's 1-based leaf numbers minus one.
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _hx(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _hx(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

# (first, second, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        _hx(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _hx(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _hx(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# --- an in-memory store ---------------------------------------------------------------------------


class MemoryReader:
    """A SubtreeReader over a dict; counts calls and keys, refuses subtrees past ``limit`` leaves."""

    def __init__(self, hashes: Mapping[SubtreeKey, bytes], limit: int | None = None) -> None:
        self.hashes = hashes
        self.limit = limit
        self.calls = 0
        self.keys = 0

    def subtree_hashes(self, keys: Sequence[SubtreeKey]) -> Mapping[SubtreeKey, bytes]:
        self.calls += 1
        self.keys += len(keys)
        if self.limit is not None:
            for level, index in keys:
                assert (index + 1) << level <= self.limit, f"read past the tree: {(level, index)}"
        return {key: self.hashes[key] for key in keys if key in self.hashes}


def _build(leaf_hashes: Sequence[bytes]) -> dict[SubtreeKey, bytes]:
    frontier = Frontier()
    store: dict[SubtreeKey, bytes] = {}
    for h in leaf_hashes:
        for done in frontier.append(h):
            store[(done.level, done.index)] = done.hash
    return store


MAX_SIZE = 300
ENTRIES = [i.to_bytes(4, "big") for i in range(MAX_SIZE)]
LEAVES = [leaf_hash(e) for e in ENTRIES]
STORE = _build(LEAVES)
REF_ROOTS = [_ref_mth(ENTRIES[:n]) for n in range(MAX_SIZE + 1)]
GOLDEN_HASHES = [leaf_hash(e) for e in LEAF_INPUTS]
GOLDEN_STORE = _build(GOLDEN_HASHES)


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- known answers --------------------------------------------------------------------------------


def test_reference_model_reproduces_the_published_roots_and_subtrees() -> None:
    for n, root in enumerate(ROOTS):
        assert _ref_mth(LEAF_INPUTS[:n]) == root
    for (level, index), h in NODE_HASHES.items():
        assert _ref_mth(LEAF_INPUTS[index << level : (index + 1) << level]) == h


def test_published_roots() -> None:
    assert ROOTS[0] == EMPTY_ROOT
    assert leaf_hash(LEAF_INPUTS[0]) == NODE_HASHES[(0, 0)]
    assert node_hash(NODE_HASHES[(0, 0)], NODE_HASHES[(0, 1)]) == NODE_HASHES[(1, 0)]
    for n, root in enumerate(ROOTS):
        assert root_from_leaf_hashes(GOLDEN_HASHES[:n]) == root
        assert root_of(n, MemoryReader(GOLDEN_STORE, limit=n)) == root


def test_stored_subtrees_are_the_published_node_hashes() -> None:
    assert GOLDEN_STORE == NODE_HASHES


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_published_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    assert _ref_path(index, LEAF_INPUTS[:size]) == proof
    assert inclusion_proof(index, size, MemoryReader(GOLDEN_STORE, limit=size)) == proof
    verify_inclusion(leaf_hash=GOLDEN_HASHES[index], index=index, tree_size=size, proof=proof, root=ROOTS[size])


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY_VECTORS)
def test_published_consistency_proofs(first: int, second: int, proof: list[bytes]) -> None:
    if first < second:
        assert _ref_proof(first, LEAF_INPUTS[:second]) == proof
    assert consistency_proof(first, second, MemoryReader(GOLDEN_STORE, limit=second)) == proof
    verify_consistency(
        first_size=first, second_size=second, first_root=ROOTS[first], second_root=ROOTS[second], proof=proof
    )


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS[1:])
def test_published_inclusion_proofs_resist_corruption(index: int, size: int, proof: list[bytes]) -> None:
    """The probes of transparency-dev's corruptInclusionProof, plus every single-bit flip."""
    leaf, root = GOLDEN_HASHES[index], ROOTS[size]
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (index - 1, size, leaf, root, proof),
        (index + 1, size, leaf, root, proof),
        (index ^ 2, size, leaf, root, proof),
        (index, size * 2, leaf, root, proof),
        (index, size // 2, leaf, root, proof),
        (index, size, b"WrongLeaf", root, proof),
        (index, size, leaf, EMPTY_ROOT, proof),
        (index, size, leaf, SOME_HASH, proof),
        (index, size, leaf, root, [*proof, b""]),
        (index, size, leaf, root, [*proof, root]),
        (index, size, leaf, root, [b"", *proof]),
        (index, size, leaf, root, [root, *proof]),
        (index, size, leaf, root, proof[:-1]),
    ]
    if len(proof) > 1:
        probes.append((index, size, leaf, root, [proof[0], SOME_HASH, *proof[1:]]))
    for i in range(len(proof)):
        for bit in range(256):
            probes.append((index, size, leaf, root, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]))
    for bit in range(256):
        probes.append((index, size, _flip(leaf, bit), root, proof))
        probes.append((index, size, leaf, _flip(root, bit), proof))
    for i, s, lh, r, p in probes:
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaf_hash=lh, index=i, tree_size=s, proof=p, root=r)


@pytest.mark.parametrize(("first", "second", "proof"), CONSISTENCY_VECTORS[1:])
def test_published_consistency_proofs_resist_corruption(first: int, second: int, proof: list[bytes]) -> None:
    """The probes of transparency-dev's corruptConsistencyProof, plus every single-bit flip."""
    r1, r2 = ROOTS[first], ROOTS[second]
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (first - 1, second, r1, r2, proof),
        (first + 1, second, r1, r2, proof),
        (first ^ 2, second, r1, r2, proof),
        (first, second * 2, r1, r2, proof),
        (first, second // 2, r1, r2, proof),
        (first, second, b"WrongRoot", r2, proof),
        (first, second, r1, b"WrongRoot", proof),
        (first, second, r2, r1, proof),
        (first, second, r1, r2, []),
        (first, second, r1, r2, [*proof, b""]),
        (first, second, r1, r2, [*proof, r1]),
        (first, second, r1, r2, [*proof, r2]),
        (first, second, r1, r2, [b"", *proof]),
        (first, second, r1, r2, [r1, *proof]),
        (first, second, r1, r2, [r2, *proof]),
        (first, second, r1, r2, [proof[0], *proof]),
        (first, second, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        for bit in range(256):
            probes.append((first, second, r1, r2, [*proof[:i], _flip(proof[i], bit), *proof[i + 1 :]]))
    for bit in range(256):
        probes.append((first, second, _flip(r1, bit), r2, proof))
        probes.append((first, second, r1, _flip(r2, bit), proof))
    for s1, s2, a, b, p in probes:
        with pytest.raises(ProofInvalid):
            verify_consistency(first_size=s1, second_size=s2, first_root=a, second_root=b, proof=p)


# --- trivial sizes and strict parsing ---------------------------------------------------------------


def test_empty_tree() -> None:
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root_of(0, MemoryReader({})) == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT
    assert root_keys(0) == []
    assert consistency_proof(0, 5, MemoryReader(STORE)) == []
    verify_consistency(first_size=0, second_size=5, first_root=EMPTY_ROOT, second_root=REF_ROOTS[5], proof=[])
    verify_consistency(first_size=0, second_size=0, first_root=EMPTY_ROOT, second_root=EMPTY_ROOT, proof=[])
    with pytest.raises(ProofInvalid, match="empty tree"):
        verify_consistency(first_size=0, second_size=5, first_root=SOME_HASH, second_root=REF_ROOTS[5], proof=[])
    with pytest.raises(ProofInvalid):
        verify_consistency(
            first_size=0, second_size=5, first_root=EMPTY_ROOT, second_root=REF_ROOTS[5], proof=[SOME_HASH]
        )
    with pytest.raises(ProofInvalid, match="empty tree has no leaves"):
        verify_inclusion(leaf_hash=SOME_HASH, index=0, tree_size=0, proof=[], root=EMPTY_ROOT)


def test_equal_sizes_need_equal_roots_and_no_proof() -> None:
    verify_consistency(first_size=5, second_size=5, first_root=REF_ROOTS[5], second_root=REF_ROOTS[5], proof=[])
    with pytest.raises(ProofInvalid, match="same size"):
        verify_consistency(first_size=5, second_size=5, first_root=REF_ROOTS[5], second_root=REF_ROOTS[6], proof=[])
    with pytest.raises(ProofInvalid, match="expected 0"):
        verify_consistency(
            first_size=5, second_size=5, first_root=REF_ROOTS[5], second_root=REF_ROOTS[5], proof=[SOME_HASH]
        )


def test_verifier_rejects_malformed_parameters() -> None:
    proof = _ref_path(1, ENTRIES[:3])

    def check(
        *,
        leaf: bytes = LEAVES[1],
        index: int = 1,
        size: int = 3,
        nodes: list[bytes] = proof,
        root: bytes = REF_ROOTS[3],
    ) -> None:
        verify_inclusion(leaf_hash=leaf, index=index, tree_size=size, proof=nodes, root=root)

    check()
    bad_calls = [
        lambda: check(index=3),
        lambda: check(index=-1),
        lambda: check(index=True),
        lambda: check(size=-3),
        lambda: check(leaf=LEAVES[1][:31]),
        lambda: check(leaf=bytearray(LEAVES[1])),  # type: ignore[arg-type]
        lambda: check(root=REF_ROOTS[3] + b"\x00"),
        lambda: check(nodes=[p + b"\x00" for p in proof]),
    ]
    for call in bad_calls:
        with pytest.raises(ProofInvalid):
            call()
    with pytest.raises(ProofInvalid, match="prefix"):
        verify_consistency(first_size=6, second_size=5, first_root=REF_ROOTS[6], second_root=REF_ROOTS[5], proof=[])
    with pytest.raises(ProofInvalid, match="proof node 0"):
        verify_consistency(
            first_size=3, second_size=4, first_root=REF_ROOTS[3], second_root=REF_ROOTS[4], proof=[b"x", b"y", b"z"]
        )


def test_generator_rejects_bad_arguments_and_incomplete_stores() -> None:
    for index, size in [(5, 5), (-1, 5), (0, 0)]:
        with pytest.raises(RequestInvalid):
            inclusion_proof(index, size, MemoryReader(STORE))
    with pytest.raises(RequestInvalid):
        consistency_proof(6, 5, MemoryReader(STORE))
    with pytest.raises(RequestInvalid):
        covering_subtrees(5, 4)
    partial = dict(STORE)
    del partial[(0, 6)]
    with pytest.raises(InternalError, match=r"\(0, 6\)"):
        inclusion_proof(7, 8, MemoryReader(partial))
    short = {**STORE, (1, 3): b"\x00" * 31}
    with pytest.raises(InternalError, match="32 bytes"):
        inclusion_proof(4, 8, MemoryReader(short))
    with pytest.raises(InternalError):
        Frontier().append(b"short")


def test_covering_subtrees() -> None:
    assert covering_subtrees(0, 0) == []
    assert covering_subtrees(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert covering_subtrees(3, 13) == [(0, 3), (2, 1), (2, 2), (0, 12)]
    assert root_keys(300) == [(8, 0), (5, 8), (3, 36), (2, 74)]
    for start in range(40):
        for end in range(start, 80):
            keys = covering_subtrees(start, end)
            covered = [leaf for level, index in keys for leaf in range(index << level, (index + 1) << level)]
            assert covered == list(range(start, end))
            # maximal: no two neighbours could be merged into one aligned subtree
            for (l1, i1), (l2, i2) in itertools.pairwise(keys):
                assert not (l1 == l2 and i1 % 2 == 0 and i2 == i1 + 1)


# --- properties over random trees -------------------------------------------------------------------

_settings = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _index_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(0, size - 1)), size


@st.composite
def _size_pair(draw: st.DrawFn) -> tuple[int, int]:
    second = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, second)), second


@_settings
@given(case=_index_in_tree(), data=st.data())
def test_inclusion_proofs_match_the_rfc_verify_and_resist_tampering(case: tuple[int, int], data: st.DataObject) -> None:
    index, size = case
    reader = MemoryReader(STORE, limit=size)
    proof = inclusion_proof(index, size, reader)
    assert reader.calls == (1 if proof else 0)
    assert proof == _ref_path(index, ENTRIES[:size])
    assert len(proof) == inclusion_proof_size(index, size)
    root = root_of(size, MemoryReader(STORE, limit=size))
    assert root == root_from_leaf_hashes(LEAVES[:size]) == REF_ROOTS[size]
    verify_inclusion(leaf_hash=LEAVES[index], index=index, tree_size=size, proof=proof, root=root)

    # Any flipped bit in a proof node, the leaf hash or the root fails.
    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    bit = data.draw(st.integers(0, 255), label="bit")
    leaf, bad_root, bad_proof = LEAVES[index], root, list(proof)
    if target == -2:
        leaf = _flip(leaf, bit)
    elif target == -1:
        bad_root = _flip(root, bit)
    else:
        bad_proof[target] = _flip(proof[target], bit)
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaf_hash=leaf, index=index, tree_size=size, proof=bad_proof, root=bad_root)

    # Another index in the same tree fails: each leaf has its own path of left/right turns.
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="other index") if size > 1 else None
    if other is not None:
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaf_hash=LEAVES[index], index=other, tree_size=size, proof=proof, root=root)

    # Another size: with that size's own root, the proof verifies only if it is exactly that size's
    # proof; with this root, only if the verifier walks the same shape (why a client must take the
    # size from a signed checkpoint, never from the proof's reply).
    other_size = data.draw(st.integers(index + 1, MAX_SIZE).filter(lambda s: s != size), label="other size")
    same_proof = _ref_path(index, ENTRIES[:other_size]) == proof
    same_shape = _ref_path_sides(index, other_size) == _ref_path_sides(index, size)
    for claimed_root, ok in [(REF_ROOTS[other_size], same_proof), (root, same_shape)]:
        if ok:
            verify_inclusion(leaf_hash=LEAVES[index], index=index, tree_size=other_size, proof=proof, root=claimed_root)
        else:
            with pytest.raises(ProofInvalid):
                verify_inclusion(
                    leaf_hash=LEAVES[index], index=index, tree_size=other_size, proof=proof, root=claimed_root
                )


@_settings
@given(case=_size_pair(), data=st.data())
def test_consistency_proofs_match_the_rfc_verify_and_resist_tampering(
    case: tuple[int, int], data: st.DataObject
) -> None:
    first, second = case
    reader = MemoryReader(STORE, limit=second)
    proof = consistency_proof(first, second, reader)
    assert reader.calls == (1 if proof else 0)
    assert proof == (_ref_proof(first, ENTRIES[:second]) if first < second else [])
    assert len(proof) == consistency_proof_size(first, second)
    r1 = root_of(first, MemoryReader(STORE, limit=first))
    r2 = root_of(second, MemoryReader(STORE, limit=second))
    assert (r1, r2) == (root_from_leaf_hashes(LEAVES[:first]), root_from_leaf_hashes(LEAVES[:second]))
    verify_consistency(first_size=first, second_size=second, first_root=r1, second_root=r2, proof=proof)

    target = data.draw(st.integers(-2, len(proof) - 1), label="target")
    bit = data.draw(st.integers(0, 255), label="bit")
    a, b, bad_proof = r1, r2, list(proof)
    if target == -2:
        a = _flip(r1, bit)
    elif target == -1:
        b = _flip(r2, bit)
    else:
        bad_proof[target] = _flip(proof[target], bit)
    with pytest.raises(ProofInvalid):
        verify_consistency(first_size=first, second_size=second, first_root=a, second_root=b, proof=bad_proof)

    # Other sizes, each with its own honest root: the proof verifies only where it is that proof.
    s2 = data.draw(st.integers(1, MAX_SIZE), label="other second")
    s1 = data.draw(st.integers(0, s2), label="other first")
    if (s1, s2) != (first, second):
        expected = _ref_proof(s1, ENTRIES[:s2]) if 0 < s1 < s2 else []
        if expected == proof:
            verify_consistency(
                first_size=s1, second_size=s2, first_root=REF_ROOTS[s1], second_root=REF_ROOTS[s2], proof=proof
            )
        else:
            with pytest.raises(ProofInvalid):
                verify_consistency(
                    first_size=s1, second_size=s2, first_root=REF_ROOTS[s1], second_root=REF_ROOTS[s2], proof=proof
                )


def test_every_small_proof_matches_the_reference_exhaustively() -> None:
    for size in range(1, 65):
        for index in range(size):
            assert inclusion_proof(index, size, MemoryReader(STORE, limit=size)) == _ref_path(index, ENTRIES[:size])
        for first in range(1, size):
            assert consistency_proof(first, size, MemoryReader(STORE, limit=size)) == _ref_proof(first, ENTRIES[:size])


# --- Frontier -----------------------------------------------------------------------------------------


def test_frontier_roots_and_completed_subtrees() -> None:
    frontier = Frontier()
    reported: list[SubtreeKey] = []
    for n, h in enumerate(LEAVES, start=1):
        done = frontier.append(h)
        assert (done[0].level, done[0].index, done[0].hash) == (0, n - 1, h)
        assert [d.level for d in done] == list(range(len(done)))
        reported.extend((d.level, d.index) for d in done)
        assert frontier.size == n
        assert frontier.root() == root_from_leaf_hashes(LEAVES[:n]) == REF_ROOTS[n]
        assert [(s.level, s.index) for s in frontier.edge] == root_keys(n)
    everything = [(level, index) for level in range(9) for index in range(MAX_SIZE >> level)]
    assert sorted(reported) == sorted(everything)  # every complete aligned subtree, each exactly once
    for level, index in everything:
        assert STORE[(level, index)] == _ref_mth(ENTRIES[index << level : (index + 1) << level])


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 7, 8, 64, 127, 200])
def test_frontier_restarts_from_stored_subtrees(cut: int) -> None:
    straight = Frontier()
    for h in LEAVES[:cut]:
        straight.append(h)
    persisted = {k: v for k, v in STORE.items() if (k[1] + 1) << k[0] <= cut}
    reader = MemoryReader(persisted, limit=cut)
    restarted = Frontier.from_subtrees(cut, reader)
    assert reader.calls == (1 if cut else 0)
    assert reader.keys == cut.bit_count()
    assert restarted.size == cut
    assert restarted.edge == straight.edge
    assert restarted.root() == straight.root()
    for h in LEAVES[cut:]:
        assert restarted.append(h) == straight.append(h)
        assert restarted.root() == straight.root()


# --- reads and speed at scale -----------------------------------------------------------------------

BIG = 100_000


@pytest.fixture(scope="module")
def big_store() -> tuple[dict[SubtreeKey, bytes], list[bytes]]:
    leaves = [leaf_hash(i.to_bytes(8, "big")) for i in range(BIG)]
    return _build(leaves), leaves


def test_proofs_need_one_batch_of_o_log_n_reads(big_store: tuple[dict[SubtreeKey, bytes], list[bytes]]) -> None:
    store, leaves = big_store
    for size in [BIG, BIG - 1, 65_536, 65_537, 99_999, 12_345]:
        bound = 2 * math.log2(size) + 2
        root_reader = MemoryReader(store, limit=size)
        root = root_of(size, root_reader)
        assert root_reader.calls == 1
        assert root_reader.keys <= math.log2(size) + 1
        for index in [0, 1, size // 2, size - 2, size - 1, 4_097 % size]:
            reader = MemoryReader(store, limit=size)
            proof = inclusion_proof(index, size, reader)
            assert (reader.calls, reader.keys <= bound) == (1, True), (index, size, reader.keys)
            assert reader.keys == len(proof_keys_for_inclusion(index, size))
            verify_inclusion(leaf_hash=leaves[index], index=index, tree_size=size, proof=proof, root=root)
        for first in [1, 2, 3, size // 3, size - 1]:
            reader = MemoryReader(store, limit=size)
            proof = consistency_proof(first, size, reader)
            assert (reader.calls, reader.keys <= bound) == (1, True), (first, size, reader.keys)
            assert reader.keys == len(proof_keys_for_consistency(first, size))
            verify_consistency(
                first_size=first,
                second_size=size,
                first_root=root_of(first, MemoryReader(store)),
                second_root=root,
                proof=proof,
            )
    assert root_from_leaf_hashes(leaves) == root_of(BIG, MemoryReader(store))


def test_inclusion_proof_speed_is_reported(
    big_store: tuple[dict[SubtreeKey, bytes], list[bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a benchmark gate (CI machines vary): prints µs per proof at 100k leaves, in memory."""
    store, _ = big_store
    reader = MemoryReader(store)
    rounds = 2_000
    started = time.perf_counter()
    for i in range(rounds):
        inclusion_proof((i * 7_919) % BIG, BIG, reader)
    per_proof = (time.perf_counter() - started) / rounds * 1e6
    with capsys.disabled():
        print(f"\ninclusion_proof at {BIG} leaves, in-memory reader: {per_proof:.1f} µs/proof")
    assert per_proof < 50_000  # only catches an accidental O(n) rewrite

"""An auditor's check of an exported log (``veilgate.verify_export``): the files alone, a pinned key."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.audit import AuditEntry, LogVerifier, entry_bytes, parse_entry, verify_export
from veilgate.errors import ProofInvalid
from veilgate.merkle import leaf_hash, root_from_leaf_hashes
from veilgate_server.audit import checkpoint_body
from veilgate_server.crypto.note import NoteSigner

SIGNER = NoteSigner.from_ed25519_seed("veilgate.test/log", b"\7" * 32)
VERIFIER = LogVerifier(SIGNER.verifier_key_string())


def _entries(count: int) -> list[bytes]:
    codes = ["OK", "OK", "PERMISSION_DENIED", "OK", "UNAUTHENTICATED"]
    return [
        entry_bytes(
            AuditEntry(
                time=f"2026-11-27T00:00:{i % 60:02d}.000Z",
                method="/veilgate.v1.EligibilityService/Evaluate",
                caller_kind="institution",
                caller_id="bank-a",
                code=codes[i % len(codes)],
                reason="" if codes[i % len(codes)] == "OK" else "CONSENT_REVOKED",
                request=base64.urlsafe_b64encode(bytes([i % 256]) * 32).decode().rstrip("="),
            )
        )
        for i in range(count)
    ]


def _lines(entries: list[bytes]) -> list[str]:
    """As ``veilgate audit export`` writes them."""
    return [f'{{"index": {i}, "leaf": "{base64.b64encode(e).decode()}"}}\n' for i, e in enumerate(entries)]


def _checkpoint(entries: list[bytes], signer: NoteSigner = SIGNER) -> str:
    root = root_from_leaf_hashes(leaf_hash(e) for e in entries)
    return signer.sign(checkpoint_body("veilgate.test/log", len(entries), root))


def test_an_untouched_export_verifies_and_counts_its_outcomes() -> None:
    entries = _entries(23)
    checked = verify_export(_lines(entries), _checkpoint(entries), VERIFIER)
    assert checked.checkpoint.tree_size == 23
    assert checked.codes == {"OK": 14, "PERMISSION_DENIED": 5, "UNAUTHENTICATED": 4}
    assert checked.since is None
    empty = verify_export([], _checkpoint([]), VERIFIER)
    assert (empty.checkpoint.tree_size, empty.codes) == (0, {})


@pytest.mark.parametrize("earlier", [0, 1, 7, 8, 22, 23])
def test_an_earlier_checkpoint_is_a_prefix_of_the_export(earlier: int) -> None:
    entries = _entries(23)
    checked = verify_export(_lines(entries), _checkpoint(entries), VERIFIER, since_note=_checkpoint(entries[:earlier]))
    assert checked.since is not None
    assert checked.since.tree_size == earlier


def test_a_rewritten_history_is_caught_by_the_earlier_checkpoint() -> None:
    """The export is self-consistent (signed by the log's own key over its own entries), but entry 3
    is not what the log held when the auditor kept a checkpoint at size 10."""
    entries = _entries(23)
    kept = _checkpoint(entries[:10])
    rewritten = [*entries[:3], _entries(40)[33], *entries[4:]]
    with pytest.raises(ProofInvalid, match="entries before 10 do not hash to the earlier checkpoint's root"):
        verify_export(_lines(rewritten), _checkpoint(rewritten), VERIFIER, since_note=kept)
    with pytest.raises(ProofInvalid, match="the earlier checkpoint covers 23 entries, the export's only 10"):
        verify_export(_lines(entries[:10]), kept, VERIFIER, since_note=_checkpoint(entries))
    foreign = _checkpoint(entries[:10], NoteSigner.generate("veilgate.test/log"))
    with pytest.raises(ProofInvalid, match=r"^the earlier checkpoint: checkpoint signature does not verify"):
        verify_export(_lines(entries), _checkpoint(entries), VERIFIER, since_note=foreign)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("drop", "line 3: entry 3 where entry 2 was due"),
        ("swap", "line 5: entry 5 where entry 4 was due"),
        ("truncate", "the export holds 22 entries; its checkpoint covers 23"),
        ("extra", "line 24: entry 23 is beyond the checkpoint's 23"),
        ("forge", "the entries do not hash to the checkpoint's root"),
        ("garbage", "entry 6: log entry is not a JSON object"),
        ("not json", "line 2: not a JSON object"),
        ("padding", "line 1: leaf is not canonical base64"),
        ("other key", "checkpoint signature does not verify with the pinned log key"),
    ],
)
def test_each_damage_is_named(damage: str, message: str) -> None:
    entries = _entries(23)
    lines, note = _lines(entries), _checkpoint(entries)
    if damage == "drop":
        del lines[2]
    elif damage == "swap":
        lines[4], lines[5] = lines[5], lines[4]
    elif damage == "truncate":
        del lines[-1]
    elif damage == "extra":
        lines += _lines(_entries(24))[23:]
    elif damage == "forge":  # a well-formed entry in place of another: only the root can tell
        lines[9] = _lines(_entries(40))[33].replace('"index": 33', '"index": 9')
    elif damage == "garbage":
        lines[6] = json.dumps({"index": 6, "leaf": base64.b64encode(b"not an entry").decode()}) + "\n"
    elif damage == "not json":
        lines[1] = "{index: 1}\n"
    elif damage == "padding":
        record = json.loads(lines[0])
        lines[0] = json.dumps({"index": 0, "leaf": record["leaf"].rstrip("=") + "=="}) + "\n"
    else:
        note = _checkpoint(entries, NoteSigner.generate("veilgate.test/log"))
    with pytest.raises(ProofInvalid, match=message):
        verify_export(lines, note, VERIFIER)


_RECORDS = st.from_regex(r'\{"index": -?[0-9]{1,3}, "leaf": "[A-Za-z0-9+/=]{0,40}"\}', fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80) | _RECORDS, max_size=4))
def test_arbitrary_lines_only_ever_raise_proof_invalid(lines: list[str]) -> None:
    entries = _entries(3)
    with pytest.raises(ProofInvalid):
        verify_export([*lines, *_lines(entries)] if lines else ["x"], _checkpoint(entries), VERIFIER)


@pytest.mark.parametrize("kind", ["citizen", "institution", "department", "public", "operator"])
def test_every_caller_kind_of_the_contract_parses_back_to_the_same_bytes(kind: str) -> None:
    entry = AuditEntry(
        time="2026-11-27T00:00:00.000Z",
        method="veilgate erase" if kind == "operator" else "/veilgate.v1.CitizenService/GetMyData",
        caller_kind=kind,
        caller_id=None,
        code="OK",
        reason="",
        request="AAAA",
    )
    assert parse_entry(entry_bytes(entry)) == entry


def test_a_caller_kind_outside_the_contract_is_refused() -> None:
    entry = AuditEntry(
        time="2026-11-27T00:00:00.000Z",
        method="m",
        caller_kind="root",
        caller_id=None,
        code="OK",
        reason="",
        request="A",
    )
    with pytest.raises(ProofInvalid, match="caller is malformed"):
        parse_entry(entry_bytes(entry))

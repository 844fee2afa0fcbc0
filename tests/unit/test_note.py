"""C2SP signed notes: Go sumdb/note known-answer vectors, strict parsing and fuzzing."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate_server.crypto.note import MAX_NOTE_BYTES, NoteInvalid, NoteSigner, NoteVerifier, open_note

# golang.org/x/mod/sumdb/note, package documentation ("Example") and note_test.go.
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG_LINE = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
GO_NOTE = GO_TEXT + "\n" + GO_SIG_LINE
# The same documentation's doubly-signed example, re-signed by a second key.
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
ENOCH_SIG_LINE = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

PETER = NoteVerifier.from_verifier_key_string(GO_VKEY)
ENOCH = NoteVerifier.from_verifier_key_string(ENOCH_VKEY)
SIGNER = NoteSigner.from_private_key_string(GO_SKEY)


# --- Go known answers ----------------------------------------------------------------------------


def test_go_signer_key_derives_the_go_verifier_key() -> None:
    assert SIGNER.name == "PeterNeumann"
    assert SIGNER.key_hash == 0xC74F20A3
    assert SIGNER.verifier_key_string() == GO_VKEY
    assert SIGNER.private_key_string() == GO_SKEY
    assert (PETER.name, PETER.key_hash) == ("PeterNeumann", 0xC74F20A3)
    assert PETER.verifier_key_string() == GO_VKEY


def test_signing_the_go_text_gives_the_go_note_byte_for_byte() -> None:
    assert SIGNER.sign(GO_TEXT) == GO_NOTE


def test_go_note_opens() -> None:
    assert open_note(GO_NOTE, verifiers=[PETER]) == GO_TEXT
    assert open_note(GO_NOTE.encode(), verifiers=[PETER]) == GO_TEXT


def test_go_doubly_signed_note_opens_with_either_key() -> None:
    doubly = GO_NOTE + ENOCH_SIG_LINE
    assert open_note(doubly, verifiers=[ENOCH]) == GO_TEXT
    assert open_note(doubly, verifiers=[PETER]) == GO_TEXT
    assert open_note(doubly, verifiers=[PETER, ENOCH]) == GO_TEXT


# --- keys ------------------------------------------------------------------------------------------


def test_generated_keys_round_trip() -> None:
    signer = NoteSigner.generate("example.com/governance")
    again = NoteSigner.from_private_key_string(signer.private_key_string())
    assert again.verifier_key_string() == signer.verifier_key_string()
    verifier = NoteVerifier.from_verifier_key_string(signer.verifier_key_string())
    assert (verifier.name, verifier.key_hash) == (signer.name, signer.key_hash)
    assert open_note(signer.sign("hello\n"), verifiers=[verifier]) == "hello\n"


def test_private_key_never_appears_in_repr() -> None:
    assert "PRIVATE" not in repr(SIGNER)
    assert GO_SKEY.rsplit("+", 1)[1] not in repr(SIGNER)


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "PeterNeumann",
        "PeterNeumann+c74f20a3",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # empty name
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong hash
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # non-canonical hex
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # short hash
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # bad base64
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX",  # non-canonical base64
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # 32 bytes: no type byte
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW ",  # trailing space
        GO_SKEY,  # a signer key is not a verifier key
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteInvalid):
        NoteVerifier.from_verifier_key_string(vkey)


def test_verifier_key_with_another_algorithm_is_refused() -> None:
    raw = base64.b64decode(GO_VKEY.split("+", 2)[2])
    other = base64.b64encode(b"\x04" + raw[1:]).decode()
    with pytest.raises(NoteInvalid, match="signature type"):
        NoteVerifier.from_verifier_key_string(f"PeterNeumann+c74f20a3+{other}")


def test_every_mangling_of_the_go_verifier_key_is_refused() -> None:
    """As Go's TestNewVerifier: every proper substring and every +1 byte change fails."""
    for i in range(len(GO_VKEY) + 1):
        for j in range(i + 1, len(GO_VKEY) + 1):
            if (i, j) != (0, len(GO_VKEY)):
                with pytest.raises(NoteInvalid):
                    NoteVerifier.from_verifier_key_string(GO_VKEY[i:j])
    for i, ch in enumerate(GO_VKEY):
        mangled = GO_VKEY[:i] + chr(ord(ch) + 1) + GO_VKEY[i + 1 :]
        with pytest.raises(NoteInvalid):
            NoteVerifier.from_verifier_key_string(mangled)


@pytest.mark.parametrize(
    "skey",
    [
        GO_SKEY.removeprefix("PRIVATE+KEY+"),
        "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",  # wrong hash
        "PRIVATE+KEY+EnochRoot+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",  # hash is per name
        "private+key+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDF",
    ],
)
def test_malformed_signer_keys_are_refused(skey: str) -> None:
    with pytest.raises(NoteInvalid):
        NoteSigner.from_private_key_string(skey)


def test_invalid_names_are_refused() -> None:
    for name in ["", "a b", "a+b", "a\u00a0b", "a\u2028b", "a\nb", "a\x00b"]:
        with pytest.raises(NoteInvalid):
            NoteSigner.generate(name)


def test_ambiguous_trusted_keys_are_refused() -> None:
    impostor = NoteVerifier.__new__(NoteVerifier)
    impostor.__dict__.update(vars(ENOCH))
    object.__setattr__(impostor, "name", PETER.name)
    object.__setattr__(impostor, "key_hash", PETER.key_hash)
    with pytest.raises(NoteInvalid, match="ambiguous"):
        open_note(GO_NOTE, verifiers=[PETER, impostor])
    assert open_note(GO_NOTE, verifiers=[PETER, PETER]) == GO_TEXT


# --- signing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "no final newline", "tab\there\n", "cr\r\n", "\ud800\n"])
def test_sign_refuses_texts_that_no_verifier_could_open(text: str) -> None:
    with pytest.raises(NoteInvalid):
        SIGNER.sign(text)


@pytest.mark.parametrize("text", ["\n", "a\n\nb\n", "ends in a blank line\n\n", "— looks like a signature\n", "济南\n"])
def test_unusual_but_valid_texts_round_trip(text: str) -> None:
    assert open_note(SIGNER.sign(text), verifiers=[PETER]) == text


# --- opening ---------------------------------------------------------------------------------------


def test_unknown_signers_are_ignored_but_one_trusted_signature_is_required() -> None:
    with pytest.raises(NoteInvalid, match="no signature by a trusted key"):
        open_note(GO_NOTE, verifiers=[ENOCH])
    with pytest.raises(NoteInvalid, match="no signature by a trusted key"):
        open_note(GO_NOTE, verifiers=[])


def test_same_name_other_hash_is_an_unknown_key() -> None:
    other = NoteSigner.generate("PeterNeumann")
    assert other.key_hash != PETER.key_hash
    assert open_note(other.sign(GO_TEXT) + GO_SIG_LINE, verifiers=[PETER]) == GO_TEXT


def test_a_bad_signature_by_a_trusted_key_rejects_the_note() -> None:
    forged = GO_SIG_LINE.replace("x08go/ZJ", "x08go/ZK")
    with pytest.raises(NoteInvalid, match="does not verify"):
        open_note(GO_NOTE + forged, verifiers=[PETER])
    with pytest.raises(NoteInvalid, match="does not verify"):
        open_note(GO_TEXT + "\n" + forged + ENOCH_SIG_LINE, verifiers=[PETER, ENOCH])


def test_a_changed_text_fails() -> None:
    with pytest.raises(NoteInvalid):
        open_note(GO_NOTE.replace("cryptography", "cryptographY"), verifiers=[PETER])


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT + GO_SIG_LINE,  # no blank line
        GO_NOTE.removesuffix("\n"),  # signature line not terminated
        GO_TEXT + "\n",  # no signature
        GO_NOTE + "\n",  # trailing blank line
        GO_TEXT + "\n" + GO_SIG_LINE.replace("— ", "-- "),
        GO_TEXT + "\n" + GO_SIG_LINE.replace("— ", "—"),
        GO_TEXT + "\n" + GO_SIG_LINE.replace(" x08go", "  x08go"),
        GO_TEXT + "\n" + GO_SIG_LINE.replace("AM=", "AN="),  # non-canonical base64
        GO_TEXT + "\n" + GO_SIG_LINE.replace("\n", " \n"),
        GO_NOTE + "— EnochRoot AAAAAA==\n",  # well-formed but too short (4 bytes): malformed even if unknown
        GO_NOTE + "— EnochRoot\n",
        GO_NOTE + "— Enoch+Root AAAAAAA=\n",
        GO_NOTE.replace("problem,", "problem,\r"),
        GO_NOTE.replace("problem,", "problem,\t"),
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteInvalid):
        open_note(note, verifiers=[PETER])


def test_invalid_utf8_bytes_are_refused() -> None:
    with pytest.raises(NoteInvalid):
        open_note(GO_NOTE.encode().replace(b"cryptography", b"crypt\xffgraphy"), verifiers=[PETER])


def test_size_and_signature_count_limits() -> None:
    big = "x" * (MAX_NOTE_BYTES - 200) + "\n"
    with pytest.raises(NoteInvalid):
        SIGNER.sign(big + "x" * 200 + "\n")
    assert open_note(SIGNER.sign(big), verifiers=[PETER]) == big
    with pytest.raises(NoteInvalid, match="larger than"):
        open_note(GO_NOTE.encode() + b"\xe2\x80\x94 X AAAAAAA=\n" * (MAX_NOTE_BYTES // 10), verifiers=[PETER])
    many = GO_NOTE + "— Other AAAAAAA=\n" * 99
    assert open_note(many, verifiers=[PETER]) == GO_TEXT
    with pytest.raises(NoteInvalid, match="more than 100"):
        open_note(many + "— Other AAAAAAA=\n", verifiers=[PETER])


# --- fuzzing ---------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.text(alphabet="— \nAx=+/\t", max_size=200)))
def test_open_note_raises_only_note_invalid(data: str | bytes) -> None:
    with contextlib.suppress(NoteInvalid):
        open_note(data, verifiers=[PETER, ENOCH])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_flipped_bit_fails(data: st.DataObject) -> None:
    encoded = bytearray(GO_NOTE.encode())
    position = data.draw(st.integers(0, len(encoded) - 1))
    bit = data.draw(st.integers(0, 7))
    encoded[position] ^= 1 << bit
    with pytest.raises(NoteInvalid):
        open_note(bytes(encoded), verifiers=[PETER])


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, codec="utf-8"), max_size=300))
def test_any_valid_text_round_trips(line: str) -> None:
    text = line.replace("\n", "") + "\n"
    assert open_note(SIGNER.sign(text), verifiers=[PETER]) == text

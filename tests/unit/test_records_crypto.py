"""Records at rest (crypto/records.py): known answers, round trips, and every tampering refused.

The known answers were computed independently of this code, with Node.js's ``crypto``
(``createCipheriv('aes-256-gcm', ...)``, OpenSSL underneath) from the layout the module documents:
a reader in another language that follows the docstring gets the same bytes.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veilgate.errors import ConfigurationError
from veilgate_server.crypto.records import WRAPPED_DATA_KEY_LENGTH, CitizenDataKey, RecordsKey, RecordsKeyError

RECORDS_KEY = bytes(range(32))
DATA_KEY = bytes(range(32, 64))
PLACE = ("taxation.monthly_income", "taxation", "2025-06-30")

KNOWN_KEY_ID = "936ecbbf5a7bfbd0"
KNOWN_WRAPPED = bytes.fromhex(
    "01000000000000000000000000"
    "2e9d97fd9109a59a2081831e3401bfb6e27264601cb45618b8a789b8f9c26369c311eb90f3e3a8a87febf4aeab46010a"
)
KNOWN_SEALED = bytes.fromhex("01000102030405060708090a0b27703cca254085989ec3f8f4154723e2f374c743fbf31de02114ae011e6f6d")


def test_known_answers() -> None:
    key = RecordsKey(RECORDS_KEY)
    assert key.key_id == KNOWN_KEY_ID
    assert key.wrap("c-1", DATA_KEY, nonce=bytes(12)) == KNOWN_WRAPPED
    assert len(KNOWN_WRAPPED) == WRAPPED_DATA_KEY_LENGTH
    data_key = CitizenDataKey("c-1", DATA_KEY)
    assert data_key.seal(*PLACE, '{"amount":1234}', nonce=bytes(range(12))) == KNOWN_SEALED
    assert key.unwrap("c-1", KNOWN_WRAPPED).open(*PLACE, KNOWN_SEALED) == '{"amount":1234}'


places = st.tuples(
    st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), min_size=1, max_size=96),
    st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), min_size=1, max_size=64),
    st.dates().map(lambda d: d.isoformat()),
)


@given(place=places, value=st.text(st.characters(exclude_categories=("Cs",)), max_size=300))
def test_a_value_opens_at_its_place_and_nowhere_else(place: tuple[str, str, str], value: str) -> None:
    data_key = CitizenDataKey("c-1", DATA_KEY)
    sealed = data_key.seal(*place, value)
    assert data_key.open(*place, sealed) == value
    item_id, department, as_of = place
    for elsewhere in (
        (item_id + "x", department, as_of),
        (item_id, department + "x", as_of),
        (item_id, department, "1999-01-01"),
    ):
        if elsewhere != place:
            with pytest.raises(RecordsKeyError):
                data_key.open(*elsewhere, sealed)
    with pytest.raises(RecordsKeyError):
        CitizenDataKey("c-2", DATA_KEY).open(*place, sealed)  # another citizen's place


@given(position=st.integers(min_value=0, max_value=len(KNOWN_SEALED) - 1), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_of_a_sealed_value_is_refused(position: int, flip: int) -> None:
    changed = bytearray(KNOWN_SEALED)
    changed[position] ^= flip
    with pytest.raises(RecordsKeyError):
        CitizenDataKey("c-1", DATA_KEY).open(*PLACE, bytes(changed))


@given(
    position=st.integers(min_value=0, max_value=WRAPPED_DATA_KEY_LENGTH - 1),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_changed_byte_of_a_wrapped_key_is_refused(position: int, flip: int) -> None:
    changed = bytearray(KNOWN_WRAPPED)
    changed[position] ^= flip
    with pytest.raises(RecordsKeyError):
        RecordsKey(RECORDS_KEY).unwrap("c-1", bytes(changed))


@pytest.mark.parametrize("wrapped", [b"", KNOWN_WRAPPED[:-1], KNOWN_WRAPPED + b"\x00"])
def test_a_wrapped_key_of_another_length_is_refused(wrapped: bytes) -> None:
    with pytest.raises(RecordsKeyError, match="malformed"):
        RecordsKey(RECORDS_KEY).unwrap("c-1", wrapped)


def test_a_data_key_opens_only_for_its_citizen_and_its_records_key() -> None:
    with pytest.raises(RecordsKeyError, match="does not open with this records key"):
        RecordsKey(RECORDS_KEY).unwrap("c-2", KNOWN_WRAPPED)
    with pytest.raises(RecordsKeyError, match="does not open with this records key"):
        RecordsKey(bytes(32)).unwrap("c-1", KNOWN_WRAPPED)


def test_fresh_keys_and_nonces_differ_each_time() -> None:
    key = RecordsKey.generate()
    first, wrapped_first = key.new_data_key("c-1")
    second, wrapped_second = key.new_data_key("c-1")
    assert wrapped_first != wrapped_second
    assert first.seal(*PLACE, "1") != first.seal(*PLACE, "1")
    with pytest.raises(RecordsKeyError):
        second.open(*PLACE, first.seal(*PLACE, "1"))


def test_the_key_file_is_made_once_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "records.key"
    made = RecordsKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("veilgate-records-key-v1:")
    assert RecordsKey.load_or_create(path).key_id == made.key_id


@pytest.mark.parametrize(
    "text",
    ["", "veilgate-records-key-v1:", "veilgate-records-key-v1:AAAA", "veilgate-records-key-v1:!!!!", "a" * 43],
)
def test_a_key_file_that_is_not_a_records_key_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "records.key"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="is not a records key"):
        RecordsKey.load_or_create(path)

"""What a department may push (core.ingest): every check, one specific refusal each, and values
that never reach a message."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate.errors import ItemNotOwned, ItemUnknown, RecordValueInvalid, RequestInvalid, RequestTooLarge
from veilgate_server.core.catalog import Catalog
from veilgate_server.core.ingest import FUTURE_DAYS, MAX_PUSH_RECORDS, CheckedRecord, PushedRecord, check_push

TODAY = date(2026, 11, 27)
SI = "social_insurance"
STATUS = "social_insurance.insured_status"  # enum
BASE = "social_insurance.monthly_contribution_base"  # decimal
MONTHS = "social_insurance.cumulative_contribution_months"  # int
HISTORY = "social_insurance.pension_contribution_history"  # records
EMPLOYER = "social_insurance.current_employer"  # string


def _push(catalog: Catalog, *records: PushedRecord, department: str = SI) -> list[CheckedRecord]:
    return list(check_push(records, catalog=catalog, department=department, today=TODAY))


def _record(item: str = MONTHS, value: str = "12", *, citizen: str = "c-1", as_of: str = "2026-11-01") -> PushedRecord:
    return PushedRecord(citizen, item, as_of, value)


def test_a_valid_push_comes_back_checked_with_canonical_values(catalog: Catalog) -> None:
    row = {"paid": True, "month": "2026-10-01", "contribution_base": "8000.00", "personal_amount": "640.00"}
    row["employer_amount"] = "1280.00"
    spaced = json.dumps([row], indent=2)  # whitespace and member order are the sender's own
    [months, history] = check_push(
        [_record(MONTHS, " 12 "), _record(HISTORY, spaced, citizen="c-2", as_of="2026-10-31")],
        catalog=catalog,
        department=SI,
        today=TODAY,
    )
    expected = ("c-1", MONTHS, SI, date(2026, 11, 1))
    assert (months.citizen_id, months.item_id, months.department, months.as_of) == expected
    assert months.value_json == "12"
    assert history.value_json == json.dumps([row], sort_keys=True, separators=(",", ":"))
    assert history.as_of == date(2026, 10, 31)


def test_a_date_up_to_one_day_ahead_is_accepted_and_no_later(catalog: Catalog) -> None:
    ahead = (TODAY + timedelta(days=FUTURE_DAYS)).isoformat()
    assert _push(catalog, _record(as_of=ahead))
    with pytest.raises(RequestInvalid, match=r"record 0 .*as_of lies more than 1 day after"):
        _push(catalog, _record(as_of=(TODAY + timedelta(days=FUTURE_DAYS + 1)).isoformat()))


@pytest.mark.parametrize(
    ("record", "error", "message"),
    [
        (_record(citizen=""), RequestInvalid, "record 1: citizen_id must be"),
        (_record(citizen="a b"), RequestInvalid, "citizen_id must be"),
        (_record(citizen="x" * 65), RequestInvalid, "citizen_id must be"),
        (_record(citizen="c\n1"), RequestInvalid, "citizen_id must be"),
        (_record(item="social_insurance.no_such"), ItemUnknown, "catalog has no data item 'social_insurance.no_such'"),
        (_record(item="taxation.annual_income_last_year"), ItemNotOwned, "belongs to department taxation"),
        (_record(as_of="2026-11-1"), RequestInvalid, r"as_of must be a date YYYY-MM-DD"),
        (_record(as_of="2026-02-30"), RequestInvalid, "not a calendar date"),
        (_record(as_of="２０２６-11-01"), RequestInvalid, "as_of must be a date"),
        (_record(value="12.0"), RecordValueInvalid, "expected an integer"),
        (_record(value="true"), RecordValueInvalid, "expected an integer"),
        (_record(value="12 13"), RecordValueInvalid, "value_json is not JSON text"),
        (_record(value=""), RecordValueInvalid, "value_json is not JSON text"),
        (_record(value="NaN"), RecordValueInvalid, "NaN is not JSON"),
        (_record(value="-Infinity"), RecordValueInvalid, "-Infinity is not JSON"),
        (_record(value=str(2**63)), RecordValueInvalid, "outside the signed 64-bit range"),
        (_record(STATUS, '"asleep"'), RecordValueInvalid, r"^record 1 \(social_insurance.insured_status\): not one"),
        (_record(BASE, "8000.5"), RecordValueInvalid, "expected a decimal string"),
        (_record(EMPLOYER, '"\\ud800"'), RecordValueInvalid, "not valid Unicode text"),
        (_record(HISTORY, '[{"month": "2026-10-01", "month": "2026-10-01"}]'), RecordValueInvalid, "repeats a member"),
        (
            _record(HISTORY, '[{"month": "2026-10-01"}]'),
            RecordValueInvalid,
            r"^record 1 \(social_insurance.pension_contribution_history\) row 0: missing field",
        ),
    ],
)
def test_each_bad_record_is_refused_with_its_own_message(
    catalog: Catalog, record: PushedRecord, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _push(catalog, _record(citizen="c-0"), record)  # the second record: its index is named
    with pytest.raises(error) as refused:
        _push(catalog, _record(citizen="c-0"), record)
    assert "record 1" in str(refused.value)


def test_a_batch_is_refused_when_empty_too_large_or_repeating_a_citizen_and_item(catalog: Catalog) -> None:
    with pytest.raises(RequestInvalid, match="at least one record"):
        _push(catalog)
    too_many = [_record(citizen=f"c-{i}") for i in range(MAX_PUSH_RECORDS + 1)]
    with pytest.raises(RequestTooLarge, match="at most 1000 records"):
        _push(catalog, *too_many)
    assert len(_push(catalog, *too_many[:MAX_PUSH_RECORDS])) == MAX_PUSH_RECORDS
    with pytest.raises(RequestInvalid, match=r"record 2 .*same citizen and item"):
        _push(catalog, _record(), _record(citizen="c-2"), _record(value="13"))


def test_a_department_outside_the_catalog_owns_nothing(catalog: Catalog) -> None:
    with pytest.raises(ItemNotOwned):
        _push(catalog, _record(), department="ghost_bureau")


CANARY = "CANARY-ingest-9d1c"


@pytest.mark.parametrize(
    "item_and_value",
    [
        (MONTHS, json.dumps(CANARY)),
        (BASE, json.dumps(CANARY)),
        (STATUS, json.dumps(CANARY)),
        (HISTORY, json.dumps([{CANARY: 1}])),
        (HISTORY, json.dumps([{"month": CANARY}])),
        (MONTHS, CANARY),
        (MONTHS, "[" + json.dumps(CANARY)),
        (f"{SI}.{CANARY}", "1"),
    ],
)
def test_no_message_repeats_a_pushed_value(catalog: Catalog, item_and_value: tuple[str, str]) -> None:
    item, value = item_and_value
    with pytest.raises(RequestInvalid) as refused:
        _push(catalog, PushedRecord("c-secret-citizen", item, "2026-11-01", value))
    message = str(refused.value)
    assert "c-secret-citizen" not in message
    if not item.endswith(CANARY):  # an unknown item id is the caller's own name for it, quoted
        assert CANARY not in message


@settings(max_examples=300, deadline=None)
@given(citizen=st.text(max_size=70), item=st.text(max_size=40), as_of=st.text(max_size=12), value=st.text(max_size=60))
def test_any_text_is_checked_or_refused_with_a_veilgate_error(
    catalog: Catalog, citizen: str, item: str, as_of: str, value: str
) -> None:
    for item_id in (item, MONTHS, EMPLOYER):
        try:
            [checked] = _push(catalog, PushedRecord(citizen, item_id, as_of, value))
        except RequestInvalid:
            continue
        assert checked.value_json.encode()  # UTF-8 text, whatever was sent


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
)
def test_canonical_json_is_a_fixed_point(catalog: Catalog, value: object) -> None:
    """Whatever a string item accepts, its stored spelling checks again to itself."""
    try:
        [first] = _push(catalog, _record(EMPLOYER, json.dumps(value, indent=1)))
    except RecordValueInvalid:
        assert not isinstance(value, str)
        return
    [again] = _push(catalog, _record(EMPLOYER, first.value_json))
    assert again.value_json == first.value_json == json.dumps(value, ensure_ascii=False)

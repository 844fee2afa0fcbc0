"""The department SDK's side of a push: values sent as the canonical JSON the gateway stores, and
a value that is not JSON refused before anything is sent, without repeating it."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from veilgate import Record
from veilgate._internal.jose import canonical_json
from veilgate.department import _pushed
from veilgate.errors import RecordValueInvalid


def test_values_go_as_canonical_json_with_dates_and_decimals_as_the_catalog_writes_them() -> None:
    row = {"paid": True, "month": date(2026, 10, 1), "contribution_base": Decimal("8000.50")}
    pushed = _pushed(Record("c-1", "social_insurance.pension_contribution_history", date(2026, 11, 1), [row]), 0)
    assert pushed.as_of == "2026-11-01"
    expected = [{"paid": True, "month": "2026-10-01", "contribution_base": "8000.50"}]
    assert pushed.value_json.encode() == canonical_json(expected)
    assert json.loads(pushed.value_json) == expected
    assert _pushed(Record("c-1", "x.y", "2026-11-01", "济南"), 0).value_json == '"济南"'  # not escaped


@pytest.mark.parametrize("value", [object(), float("nan"), {1, 2}, b"CANARY-bytes"])
def test_a_value_that_is_not_json_is_refused_before_sending(value: object) -> None:
    with pytest.raises(RecordValueInvalid, match=r"^record 3 \(x\.y\): the value is not JSON") as refused:
        _pushed(Record("c-secret", "x.y", "2026-11-01", value), 3)
    assert "CANARY" not in str(refused.value)
    assert "c-secret" not in str(refused.value)

"""The delivery encoder must write exactly the canonical JSON of the delivery's claims, as the
contract in proto/veilgate/v1/citizen.proto lists them (built here independently, the plain way)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate._internal.jose import canonical_json
from veilgate.delivery import request_binding
from veilgate.errors import InternalError
from veilgate_server.config import default_policies_dir
from veilgate_server.core.catalog import Catalog, CatalogItem, load_catalog
from veilgate_server.core.delivery import DeliveryEncoder

CATALOG = load_catalog(default_policies_dir() / "catalog.yaml")


@dataclass(frozen=True)
class Record:
    item_id: str
    as_of: date
    value_json: str


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def _reference_claims(
    *,
    gateway_id: str,
    citizen_id: str,
    selected: tuple[CatalogItem, ...],
    records: list[Record],
    request_token: str,
    delivery_id: str,
    watermark: str,
    issued_at: int,
) -> dict[str, Any]:
    by_item = {record.item_id: record for record in records}
    items = []
    for item in selected:
        if (record := by_item.get(item.id)) is not None:
            entry = {
                "id": item.id,
                "department": item.department,
                "as_of": record.as_of.isoformat(),
                "sensitivity": item.sensitivity,
                "type": item.type,
                "value": json.loads(record.value_json),
            }
            if item.unit is not None:
                entry["unit"] = item.unit
            items.append(entry)
    return {
        "iss": gateway_id,
        "sub": citizen_id,
        "iat": issued_at,
        "jti": delivery_id,
        "request": request_binding(request_token),
        "watermark": watermark,
        "items": items,
    }


def _encode_both(catalog: Catalog, records: list[Record], **fields: object) -> tuple[bytes, bytes, int]:
    args = {
        "gateway_id": "gw.example",
        "citizen_id": "c-0001",
        "selected": tuple(catalog.items.values()),
        "records": records,
        "request_token": "a.b.c",
        "delivery_id": "d-1",
        "watermark": "wm_00",
        "issued_at": 1_700_000_000,
    } | fields
    rows = {r.item_id: (r.as_of.isoformat(), r.value_json) for r in records}
    fast, count = DeliveryEncoder(catalog).payload(**(args | {"records": rows}))  # type: ignore[arg-type]
    return fast, canonical_json(_reference_claims(**args)), count  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(sorted(CATALOG.items)), unique=True, max_size=20),
    values=st.lists(json_values, min_size=20, max_size=20),
    days=st.integers(0, 20_000),
    citizen=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20),  # ids are printable
)
def test_payload_is_the_canonical_json_of_the_claims(
    chosen: list[str], values: list[object], days: int, citizen: str
) -> None:
    records = [
        Record(item_id, date.fromordinal(700_000 + days), canonical_json(value).decode())
        for item_id, value in zip(chosen, values, strict=False)
    ]
    fast, reference, count = _encode_both(CATALOG, records, citizen_id=citizen)
    assert fast == reference
    assert count == len(records)
    assert len(json.loads(fast)["items"]) == len(records)


def test_items_keep_catalog_order_and_units() -> None:
    with_unit = next(item for item in CATALOG.items.values() if item.unit is not None)
    first = next(iter(CATALOG.items.values()))
    records = [Record(with_unit.id, date(2026, 1, 2), "1200"), Record(first.id, date(2025, 5, 6), '"x"')]
    fast, reference, count = _encode_both(CATALOG, records)
    assert fast == reference
    assert count == 2
    items = json.loads(fast)["items"]
    assert [item["id"] for item in items] == [
        item.id for item in CATALOG.items.values() if item.id in {r.item_id for r in records}
    ]
    assert {"unit": with_unit.unit, "value": 1200}.items() <= next(i for i in items if i["id"] == with_unit.id).items()


def test_a_member_holding_the_placeholder_fails_closed() -> None:
    """The item list is joined in where a NUL-bearing placeholder stands; a value that spells the
    same placeholder cannot make it land elsewhere: the encoder refuses instead."""
    with pytest.raises(InternalError, match="placeholder"):
        _encode_both(CATALOG, [], watermark="\u0000items\u0000")

"""What a citizen's data delivery contains, and which catalog items a request selects.

A delivery is the gateway-signed statement "at ``iat``, the departments held these values about
``sub``", bound to the request that asked for it (``request`` = SHA-256 of the request token) and
stamped with a fresh ``watermark`` so that a copy that leaks can be traced to this one delivery.
Items the citizen has no record for are left out rather than sent empty.

Pure: the delivery id, watermark and time are parameters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any, Protocol

from veilgate.delivery import request_binding
from veilgate_server.core.catalog import Catalog, CatalogItem

__all__ = ["RecordView", "delivery_claims", "select_items"]


class RecordView(Protocol):
    """The parts of a stored record a delivery needs."""

    @property
    def item_id(self) -> str: ...
    @property
    def as_of(self) -> date: ...
    @property
    def value_json(self) -> str: ...


def select_items(
    catalog: Catalog, *, items: Sequence[str] | None, departments: Sequence[str] | None
) -> tuple[CatalogItem, ...]:
    """The catalog items a request names: the union of ``items`` and every item of ``departments``,
    in catalog order; everything when both are absent. Unknown ids raise ItemUnknown /
    DepartmentUnknown naming the first one."""
    if items is None and departments is None:
        return tuple(catalog.items.values())
    wanted = {catalog.item(item_id).id for item_id in items or ()}
    for department_id in departments or ():
        catalog.department(department_id)
        wanted.update(item.id for item in catalog.items_of(department_id))
    return tuple(item for item in catalog.items.values() if item.id in wanted)


def delivery_claims(
    *,
    gateway_id: str,
    citizen_id: str,
    selected: Iterable[CatalogItem],
    records: Iterable[RecordView],
    request_token: str,
    delivery_id: str,
    watermark: str,
    issued_at: int,
) -> dict[str, Any]:
    """The JWS payload of a delivery (contract in proto/veilgate/v1/citizen.proto)."""
    by_item = {record.item_id: record for record in records}
    items: list[dict[str, Any]] = []
    for item in selected:
        record = by_item.get(item.id)
        if record is None:
            continue
        entry: dict[str, Any] = {
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

"""What a citizen's data delivery contains, and which catalog items a request selects.

A delivery is the gateway-signed statement "at ``iat``, the departments held these values about
``sub``", bound to the request that asked for it (``request`` = SHA-256 of the request token) and
stamped with a fresh ``watermark`` so that a copy that leaks can be traced to this one delivery.
Items the citizen has no record for are left out rather than sent empty.

Pure: the delivery id, watermark and time are parameters.

:class:`DeliveryEncoder` writes the payload (contract in proto/veilgate/v1/citizen.proto) straight
to canonical JSON bytes. A full delivery has 188 items, and decoding every stored value only to
encode it again cost about 1 ms a call (measured), more than the signature and the seal together:
stored values are canonical JSON already (the record store's invariant), so they are spliced in as
they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from veilgate._internal.jose import canonical_json
from veilgate.delivery import request_binding
from veilgate.errors import InternalError
from veilgate_server.core.catalog import Catalog, CatalogItem

__all__ = ["DeliveryEncoder", "select_items"]


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


def _item_meta(item: CatalogItem) -> dict[str, Any]:
    """An item's members that come from the catalog (all but ``as_of`` and ``value``)."""
    meta: dict[str, Any] = {
        "id": item.id,
        "department": item.department,
        "sensitivity": item.sensitivity,
        "type": item.type,
    }
    if item.unit is not None:
        meta["unit"] = item.unit
    return meta


_ITEMS_MARK = "\u0000items\u0000"  # stands for the item list; no other member can hold a NUL
_ITEMS_MARK_JSON = json.dumps(_ITEMS_MARK).encode()
_AS_OF_MARK = "\u0000as_of\u0000"


class DeliveryEncoder:
    """Builds a delivery's payload as canonical JSON bytes, without decoding and re-encoding the
    stored values: ``iss``, ``sub``, ``iat``, ``jti``, ``request``, ``watermark`` and ``items``,
    each item with ``id``, ``department``, ``as_of``, ``sensitivity``, ``type``, ``unit`` (when the
    catalog has one) and ``value``, in catalog order.

    Each catalog item's members are encoded once, here: per delivery only ``as_of`` and the stored
    ``value_json`` (canonical JSON, the record store's invariant) are joined in. In canonical member
    order ``as_of`` comes first and ``value`` last, so an item is ``head + as_of + middle + value + "}"``.
    """

    __slots__ = ("_frames",)

    def __init__(self, catalog: Catalog) -> None:
        self._frames: Mapping[str, tuple[bytes, bytes]] = {
            item.id: self._frame(item) for item in catalog.items.values()
        }

    @staticmethod
    def _frame(item: CatalogItem) -> tuple[bytes, bytes]:
        meta = _item_meta(item)
        meta["as_of"] = _AS_OF_MARK
        encoded = canonical_json(meta)  # {"as_of":MARK,"department":...,"unit":...}
        mark = json.dumps(_AS_OF_MARK).encode()
        head, middle = encoded[:-1].split(mark)
        return head + b'"', b'"' + middle + b',"value":'

    def payload(
        self,
        *,
        gateway_id: str,
        citizen_id: str,
        selected: Iterable[CatalogItem],
        records: Mapping[str, tuple[str, str]],
        request_token: str,
        delivery_id: str,
        watermark: str,
        issued_at: int,
    ) -> tuple[bytes, int]:
        """The payload's bytes and the number of items in it (items without a record are left out).

        ``records`` maps item id to ``(as_of as an ISO date, value_json)``, as
        :meth:`~veilgate_server.storage.RecordStore.for_delivery` reads them."""
        parts: list[bytes] = []
        for item in selected:
            record = records.get(item.id)
            if record is None:
                continue
            head, middle = self._frames[item.id]
            as_of, value = record
            parts.append(b"".join((head, as_of.encode(), middle, value.encode(), b"}")))
        envelope = canonical_json(
            {
                "iss": gateway_id,
                "sub": citizen_id,
                "iat": issued_at,
                "jti": delivery_id,
                "request": request_binding(request_token),
                "watermark": watermark,
                "items": _ITEMS_MARK,
            }
        )
        pieces = envelope.split(_ITEMS_MARK_JSON)
        if len(pieces) != 2:
            raise InternalError("a delivery member spells the item-list placeholder; refusing to encode it")
        before, after = pieces
        return b"".join((before, b"[", b",".join(parts), b"]", after)), len(parts)

"""What a department may push: the checks every pushed record passes before it is stored.

A department pushes records of the items it owns in the catalog (:mod:`veilgate_server.core.catalog`),
each with the citizen it is about, the date it holds as of, and the value as JSON text in the
catalog's wire contract. :func:`check_push` takes the whole batch and either returns every record in
the form the store keeps (the value re-encoded as canonical JSON, so that one value has one
spelling at rest and in deliveries) or raises for the first record that fails; a batch is stored
whole or not at all.

Messages name the record by its index in the batch, and its item, row and field, but never a value
or a citizen id: they reach the department, and whatever an error says may end up in a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final, Protocol

from veilgate._internal.jose import canonical_json
from veilgate.errors import ItemNotOwned, ItemUnknown, RequestInvalid, RequestTooLarge
from veilgate_server.core.catalog import Catalog, CatalogValueError, validate_value

__all__ = ["FUTURE_DAYS", "MAX_PUSH_RECORDS", "CheckedRecord", "Pushed", "PushedRecord", "check_push"]

MAX_PUSH_RECORDS: Final = 1000
"""Records in one push at most: a push is one transaction, and holds the log's writer for its length."""

FUTURE_DAYS: Final = 1
"""How many days after the gateway's UTC date an ``as_of`` may lie (a department a time zone ahead)."""

_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_CITIZEN_ID: Final = 64


class Pushed(Protocol):
    """One record as a department sent it, not yet checked: a :class:`PushedRecord`, or the wire's
    ``veilgate.v1.PushedRecord`` message itself (not copied first: a push holds up to 1000)."""

    @property
    def citizen_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def as_of(self) -> str: ...
    @property
    def value_json(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PushedRecord:
    """One record as a department sent it, not yet checked."""

    citizen_id: str
    item_id: str
    as_of: str
    value_json: str


@dataclass(frozen=True, slots=True)
class CheckedRecord:
    """A record that passed every check: ``value_json`` is the value's canonical JSON."""

    citizen_id: str
    item_id: str
    department: str
    as_of: date
    value_json: str


def check_push(records: Sequence[Pushed], *, catalog: Catalog, department: str, today: date) -> list[CheckedRecord]:
    """Check a department's batch against the catalog; raise for the first record that fails.

    Raises :class:`~veilgate.errors.RequestInvalid` for an empty batch, a malformed citizen id or
    date, a date more than :data:`FUTURE_DAYS` ahead of ``today`` or two records for one citizen and
    item; :class:`~veilgate.errors.RequestTooLarge` for more than :data:`MAX_PUSH_RECORDS`;
    :class:`~veilgate.errors.ItemUnknown` for an item the catalog lacks;
    :class:`~veilgate.errors.ItemNotOwned` for another department's item; and
    :class:`~veilgate_server.core.catalog.CatalogValueError` (``RECORD_VALUE_INVALID``) for a value
    that is not JSON of its item's type."""
    if not records:
        raise RequestInvalid("a push holds at least one record")
    if len(records) > MAX_PUSH_RECORDS:
        raise RequestTooLarge(f"a push holds at most {MAX_PUSH_RECORDS} records; this one holds {len(records)}")
    latest = today + timedelta(days=FUTURE_DAYS)
    seen: set[tuple[str, str]] = set()
    dates: dict[str, date] = {}  # a push's records mostly share one date: each text parsed once
    checked: list[CheckedRecord] = []
    for index, record in enumerate(records):
        citizen_id, text = record.citizen_id, record.value_json
        if not citizen_id or len(citizen_id) > _MAX_CITIZEN_ID or not citizen_id.isprintable() or " " in citizen_id:
            raise RequestInvalid(f"record {index}: citizen_id must be 1 to 64 printable characters without spaces")
        try:
            item = catalog.item(record.item_id)
        except ItemUnknown:
            raise ItemUnknown(f"record {index}: the catalog has no data item {_shown(record.item_id)}") from None
        if item.department != department:
            raise ItemNotOwned(
                f"record {index} ({item.id}): the item belongs to department {item.department}, not {department}"
            )
        as_of = dates.get(record.as_of)
        if as_of is None:
            as_of = dates[record.as_of] = _as_of(record.as_of, f"record {index} ({item.id})")
        if as_of > latest:
            raise RequestInvalid(
                f"record {index} ({item.id}): as_of lies more than {FUTURE_DAYS} day after the gateway's date"
            )
        key = (citizen_id, item.id)
        if key in seen:
            raise RequestInvalid(
                f"record {index} ({item.id}): an earlier record of this push has the same citizen and item"
            )
        seen.add(key)
        value = _parse_value(text, index, item.id)
        try:
            validate_value(item, value)
            canonical = canonical_json(value)
        except CatalogValueError as e:  # "data item 'x' row 3 field 'y': ..." becomes "record 7 (x) row 3 ..."
            _parse_value(text, index, item.id, strict=True)  # a name given twice is what is wrong first
            raise CatalogValueError(
                f"record {index} ({item.id})" + e.message.removeprefix(f"data item {item.id!r}")
            ) from None
        except UnicodeEncodeError:  # a lone surrogate escaped in a string: not text
            raise CatalogValueError(f"record {index} ({item.id}): a string escapes half of a surrogate pair") from None
        if canonical != text.encode():
            # Spelled otherwise than canonically: whitespace, member order, escapes, or a member
            # name given twice, which the quick parse kept only once. A strict parse tells which.
            _parse_value(text, index, item.id, strict=True)
        checked.append(CheckedRecord(citizen_id, item.id, department, as_of, canonical.decode()))
    return checked


def _as_of(text: str, where: str) -> date:
    if _DATE.fullmatch(text) is None:
        raise RequestInvalid(f"{where}: as_of must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RequestInvalid(f"{where}: as_of is not a calendar date") from None


class _Rejected(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _Rejected("an object repeats a member name")
    return members


def _no_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not JSON")


def _parse_value(text: str, index: int, item_id: str, *, strict: bool = False) -> object:
    """JSON without NaN or Infinity and nothing after the value; ``strict``: nor a member name given
    twice in one object (the quick parse keeps the last; see :func:`check_push` for when that is
    enough)."""
    try:
        return (_STRICT if strict else _QUICK).decode(text)
    except _Rejected as e:
        raise CatalogValueError(f"record {index} ({item_id}): value_json is not strict JSON: {e}") from None
    except (ValueError, RecursionError):
        # json's message quotes no value, but its position would point into one: not passed on.
        raise CatalogValueError(f"record {index} ({item_id}): value_json is not JSON text") from None


_QUICK: Final = json.JSONDecoder(parse_constant=_no_constant)
_STRICT: Final = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)


def _shown(item_id: str) -> str:
    """An item id as a message may quote it: the caller's own text, bounded and without controls."""
    return repr(item_id[:96]) if item_id.isprintable() else "(not printable)"

"""The data catalog: which data items each department holds, their types, and how values travel.

The catalog (``policies/catalog.yaml``) is the one place that says what a data item *is*. Departments
may only push items they own, deliveries label every value with its department and sensitivity, and
policies are type-checked against it. So the loader is strict in the way the rest of Veilgate parses
wire data: duplicate YAML keys, unknown keys, missing keys, wrong types, merge keys and undeclared
references are all rejected, each with one message that names the file, the entry (index and id),
the key and the line.

Value wire contract (JSON, used inside signed deliveries; other languages must agree):

============ ==========================================================================================
``int``      a JSON integer (never a boolean) within the signed 64-bit range
``decimal``  a string ``-?(0|[1-9][0-9]*)(\\.[0-9]{1,4})?``, at most 32 characters (no floats: binary
             floating point would change amounts on the way through other languages)
``string``   any string of at most 1000 characters that encodes as UTF-8 (empty is allowed)
``date``     a string ``YYYY-MM-DD`` naming a real calendar date
``bool``     a JSON boolean
``enum``     a string, one of the item's declared ``values``
``records``  a list of at most 1000 rows; each row an object with exactly the declared field names,
             each field valued as its scalar type above
============ ==========================================================================================

:func:`validate_value` enforces this and raises :class:`CatalogValueError`. Its messages name the item,
the row and the field but never the offending value: record values are personal data and error
messages end up in logs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, NewType, NoReturn, get_args

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from veilgate.errors import CatalogError, ConfigurationError, DepartmentUnknown, ItemUnknown, RecordValueInvalid

__all__ = [
    "CATALOG_VERSION",
    "MAX_RECORD_ROWS",
    "MAX_STRING_LENGTH",
    "Catalog",
    "CatalogItem",
    "CatalogValueError",
    "Department",
    "DepartmentId",
    "FieldSpec",
    "ItemId",
    "ScalarType",
    "ValueType",
    "load_catalog",
    "parse_catalog",
    "validate_value",
]

ItemId = NewType("ItemId", str)
DepartmentId = NewType("DepartmentId", str)

ScalarType = Literal["int", "decimal", "string", "date", "bool", "enum"]
ValueType = Literal["int", "decimal", "string", "date", "bool", "enum", "records"]

CATALOG_VERSION: Final = 1
MAX_RECORD_ROWS: Final = 1000
MAX_STRING_LENGTH: Final = 1000
_MAX_DECIMAL_LENGTH: Final = 32
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

_TYPE_NAMES: Final[dict[str, ValueType]] = {name: name for name in get_args(ValueType)}
_SCALAR_TYPES: Final[frozenset[str]] = frozenset(get_args(ScalarType))
_VALUE_TYPES: Final[frozenset[str]] = frozenset(_TYPE_NAMES)
_UNIT_TYPES: Final[frozenset[str]] = frozenset({"int", "decimal"})

_DEPARTMENT_ID: Final = re.compile(r"[a-z][a-z0-9_]*")
_ITEM_ID: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_FIELD_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_DECIMAL: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]{1,4})?")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class CatalogValueError(RecordValueInvalid):
    """A record value does not have the shape its catalog item declares.

    The message names the item, row and field, never the value itself.
    """


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One column of a ``records`` item."""

    name: str
    type: ScalarType
    unit: str | None
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Department:
    id: DepartmentId
    name_en: str
    name_zh: str


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One data item. ``values`` is set for enums only, ``fields`` for records only."""

    id: ItemId
    department: DepartmentId
    type: ValueType
    sensitivity: int
    name_en: str
    name_zh: str
    unit: str | None
    values: tuple[str, ...]
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True, slots=True)
class Catalog:
    """The parsed catalog; ``departments`` and ``items`` keep the file's order and are read-only.

    ``sha256`` is the hex SHA-256 of the file's bytes that were parsed (:func:`load_catalog`), which
    the gateway holds to the signed manifest; empty for a catalog parsed from text."""

    version: int
    departments: Mapping[DepartmentId, Department]
    items: Mapping[ItemId, CatalogItem]
    sha256: str = ""

    def item(self, item_id: str) -> CatalogItem:
        found = self.items.get(ItemId(item_id))
        if found is None:
            raise ItemUnknown(f"unknown data item {item_id!r}")
        return found

    def department(self, department_id: str) -> Department:
        found = self.departments.get(DepartmentId(department_id))
        if found is None:
            raise DepartmentUnknown(f"unknown department {department_id!r}")
        return found

    def items_of(self, department_id: str) -> tuple[CatalogItem, ...]:
        """The items a department owns, in catalog order; raises for an undeclared department."""
        self.department(department_id)
        return tuple(item for item in self.items.values() if item.department == department_id)


# --- YAML with line numbers and without duplicate keys ---------------------------------------------


class _Map(dict[object, object]):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    __slots__ = ("key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[object, int] = {}


class _Seq(list[object]):
    """A YAML sequence that remembers its own line and the line of each element (1-based)."""

    __slots__ = ("item_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate and merge (``<<``) keys and keeps line numbers.

    PyYAML silently keeps the last of two equal keys, so a reviewer could read one value in a file
    while the gateway uses another. Merge keys are refused for the same reason: what the file says
    should be what the catalog is.
    """

    def construct_object(self, node: Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError):  # e.g. !!int 0xZZ, or 2024-13-45 resolved as a timestamp
            kind = node.tag.rsplit(":", 1)[-1]
            raise ConstructorError(None, None, f"invalid {kind} value", node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, object]:
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        mapping = _Map(node.start_mark.line + 1)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found unhashable key",
                    key_node.start_mark,
                ) from None
            if key in mapping:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {_short(key)}",
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping


def _construct_map(loader: _StrictLoader, node: MappingNode) -> _Map:
    built = loader.construct_mapping(node, deep=True)
    assert isinstance(built, _Map)
    return built


def _construct_seq(loader: _StrictLoader, node: SequenceNode) -> _Seq:
    seq = _Seq(node.start_mark.line + 1)
    for child in node.value:
        seq.append(loader.construct_object(child, deep=True))
        seq.item_lines.append(child.start_mark.line + 1)
    return seq


def _refuse_merge(loader: _StrictLoader, node: Node) -> NoReturn:
    raise ConstructorError(None, None, "merge keys ('<<') are not allowed", node.start_mark)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_StrictLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_StrictLoader.add_constructor("tag:yaml.org,2002:merge", _refuse_merge)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_yaml(text: str, source: str) -> object:
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "malformed YAML"
        if mark is None:
            raise CatalogError(f"{source}: invalid YAML: {problem}") from e
        line = mark.line + 1
        entry = _entry_at_line(text, mark.line)
        where = f" {entry}:" if entry else ""
        raise CatalogError(f"{source}:{line}:{where} invalid YAML: {problem}") from e
    except yaml.YAMLError as e:  # ReaderError: a character YAML does not allow
        raise CatalogError(f"{source}: invalid YAML: {_yaml_problem(e)}") from e
    except (ValueError, OverflowError) as e:  # a scalar constructor PyYAML did not guard
        raise CatalogError(f"{source}: invalid YAML scalar: {e}") from e
    except RecursionError as e:
        raise CatalogError(f"{source}: invalid YAML: nested too deeply") from e
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(error: yaml.YAMLError) -> str:
    reason = getattr(error, "reason", None)
    position = getattr(error, "position", None)
    if isinstance(reason, str) and isinstance(position, int):
        return f"{reason} at character {position}"
    return type(error).__name__


def _entry_at_line(text: str, line0: int) -> str | None:
    """Name the ``departments``/``items`` entry that spans a 0-based line, for YAML-level errors."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, ValueError, RecursionError):
        return None
    if not isinstance(root, MappingNode):
        return None
    for key_node, value_node in root.value:
        if key_node.value not in ("departments", "items") or not isinstance(value_node, SequenceNode):
            continue
        for index, entry in enumerate(value_node.value):
            if entry.start_mark.line <= line0 <= entry.end_mark.line:
                entry_id = _node_id(entry)
                label = f"{key_node.value}[{index}]"
                return f"{label} ({_short(entry_id)})" if entry_id else label
    return None


def _node_id(node: Node) -> str | None:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "id" and isinstance(value_node.value, str):
                return value_node.value
    return None


# --- validation ------------------------------------------------------------------------------------


class _Checker:
    """Checks strict YAML (catalog, policies) and raises ``error`` (default :class:`CatalogError`)
    with ``<source>:<line>: <entry>: <key>: <problem>``: one message per failure."""

    def __init__(self, source: str, error: type[ConfigurationError] = CatalogError) -> None:
        self.source = source
        self.error = error

    def fail(self, line: int | None, where: str, problem: str) -> NoReturn:
        location = f"{self.source}:{line}" if line else self.source
        raise self.error(f"{location}: {where}: {problem}")

    def mapping(self, value: object, line: int | None, where: str) -> _Map:
        if not isinstance(value, _Map):
            self.fail(line, where, "must be a mapping")
        return value

    def sequence(self, value: object, line: int | None, where: str) -> _Seq:
        if not isinstance(value, _Seq):
            self.fail(line, where, "must be a list")
        return value

    def keys(self, entry: _Map, where: str, *, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        allowed = set(required) | set(optional)
        for key in entry:
            if not isinstance(key, str):
                self.fail(entry.key_lines[key], where, f"key {_short(key)} is not a string")
            if key not in allowed:
                self.fail(entry.key_lines[key], where, f"unknown key {_short(key)}")
        for key in required:
            if key not in entry:
                self.fail(entry.line, where, f"missing required key {key!r}")

    def text(self, entry: _Map, key: str, where: str, pattern: re.Pattern[str] | None = None) -> str:
        value = entry[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(entry.key_lines[key], where, f"{key!r} must be a non-empty string")
        if pattern is not None and pattern.fullmatch(value) is None:
            self.fail(entry.key_lines[key], where, f"{key!r} value {value!r} does not match {pattern.pattern}")
        return value

    def integer(self, entry: _Map, key: str, where: str) -> int:
        value = entry[key]
        if type(value) is not int:
            self.fail(entry.key_lines[key], where, f"{key!r} must be an integer")
        return value

    def identifier(self, entry: _Map, key: str, where: str, pattern: re.Pattern[str], shape: str) -> str:
        value = entry[key]
        if not isinstance(value, str) or pattern.fullmatch(value) is None:
            self.fail(entry.key_lines[key], where, f"{key!r} must be {shape}")
        return value


def parse_catalog(text: str, *, source: str) -> Catalog:
    """Parse and check catalog YAML; ``source`` names the file in every error message."""
    if not isinstance(text, str):
        raise CatalogError(f"{source}: catalog text must be a string")
    data = _load_yaml(text, source)
    check = _Checker(source)
    if data is None:
        check.fail(None, "document", "the catalog is empty")
    root = check.mapping(data, 1, "document")
    check.keys(root, "document", required=("version", "departments", "items"), optional=())

    version = root["version"]
    if type(version) is not int or version != CATALOG_VERSION:
        check.fail(root.key_lines["version"], "document", f"'version' must be {CATALOG_VERSION}")

    departments = _parse_departments(check, root)
    items = _parse_items(check, root, departments)
    return Catalog(
        version=CATALOG_VERSION,
        departments=MappingProxyType(departments),
        items=MappingProxyType(items),
    )


def load_catalog(path: Path) -> Catalog:
    """Read and parse a catalog file; an unreadable file is a :class:`CatalogError` too."""
    source = str(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CatalogError(f"{source}: not UTF-8 text at byte {e.start}") from e
    except OSError as e:
        raise CatalogError(f"{source}: cannot read catalog: {e.strerror or type(e).__name__}") from e
    return replace(parse_catalog(text, source=source), sha256=hashlib.sha256(data).hexdigest())


def _parse_departments(check: _Checker, root: _Map) -> dict[DepartmentId, Department]:
    entries = check.sequence(root["departments"], root.key_lines["departments"], "'departments'")
    if not entries:
        check.fail(entries.line, "'departments'", "must declare at least one department")
    departments: dict[DepartmentId, Department] = {}
    for index, raw in enumerate(entries):
        entry = check.mapping(raw, entries.item_lines[index], f"departments[{index}]")
        where = _entry_label("departments", index, entry)
        check.keys(entry, where, required=("id", "name_en", "name_zh"), optional=())
        dep_id = check.identifier(entry, "id", where, _DEPARTMENT_ID, "lower snake case ([a-z][a-z0-9_]*)")
        if dep_id in departments:
            check.fail(entry.key_lines["id"], where, f"duplicate department id {dep_id!r}")
        departments[DepartmentId(dep_id)] = Department(
            id=DepartmentId(dep_id),
            name_en=check.text(entry, "name_en", where),
            name_zh=check.text(entry, "name_zh", where),
        )
    return departments


def _entry_label(section: str, index: int, entry: _Map) -> str:
    entry_id = entry.get("id")
    if isinstance(entry_id, str) and entry_id:
        return f"{section}[{index}] ({_short(entry_id)})"
    return f"{section}[{index}]"


_ITEM_REQUIRED: Final = ("id", "department", "type", "sensitivity", "name_en", "name_zh")
_ITEM_OPTIONAL: Final = ("unit", "values", "fields")


def _parse_items(
    check: _Checker, root: _Map, departments: Mapping[DepartmentId, Department]
) -> dict[ItemId, CatalogItem]:
    entries = check.sequence(root["items"], root.key_lines["items"], "'items'")
    if not entries:
        check.fail(entries.line, "'items'", "must declare at least one item")
    items: dict[ItemId, CatalogItem] = {}
    for index, raw in enumerate(entries):
        entry = check.mapping(raw, entries.item_lines[index], f"items[{index}]")
        where = _entry_label("items", index, entry)
        check.keys(entry, where, required=_ITEM_REQUIRED, optional=_ITEM_OPTIONAL)
        item_id = check.identifier(entry, "id", where, _ITEM_ID, "a dotted id 'department.item' of [a-z0-9_] segments")
        if item_id in items:
            check.fail(entry.key_lines["id"], where, f"duplicate item id {item_id!r}")

        department = entry["department"]
        line = entry.key_lines["department"]
        if not isinstance(department, str):
            check.fail(line, where, "'department' must be a string")
        if department not in departments:
            check.fail(line, where, f"'department' {_short(department)} is not declared in 'departments'")
        if item_id.split(".", 1)[0] != department:
            check.fail(entry.key_lines["id"], where, f"'id' must start with its department {department!r}")

        sensitivity = entry["sensitivity"]
        if type(sensitivity) is not int or not 1 <= sensitivity <= 4:
            check.fail(entry.key_lines["sensitivity"], where, "'sensitivity' must be an integer 1 to 4")

        item_type = _value_type(check, entry, where, allow_records=True)
        unit, values = _unit_and_values(check, entry, where, item_type)
        fields: tuple[FieldSpec, ...] = ()
        if item_type == "records":
            if "fields" not in entry:
                check.fail(entry.line, where, "records items need 'fields'")
            fields = _parse_fields(check, entry, where)
        elif "fields" in entry:
            check.fail(entry.key_lines["fields"], where, "'fields' is only allowed on records items")

        items[ItemId(item_id)] = CatalogItem(
            id=ItemId(item_id),
            department=DepartmentId(department),
            type=item_type,
            sensitivity=sensitivity,
            name_en=check.text(entry, "name_en", where),
            name_zh=check.text(entry, "name_zh", where),
            unit=unit,
            values=values,
            fields=fields,
        )
    return items


def _value_type(check: _Checker, entry: _Map, where: str, *, allow_records: bool) -> ValueType:
    value = entry["type"]
    line = entry.key_lines["type"]
    if value == "records" and not allow_records:
        check.fail(line, where, "'type' records cannot be nested inside a records field")
    allowed = _VALUE_TYPES if allow_records else _SCALAR_TYPES
    if not isinstance(value, str) or value not in allowed:
        check.fail(line, where, f"'type' must be one of {', '.join(sorted(allowed))}")
    return _TYPE_NAMES[value]


def _unit_and_values(
    check: _Checker, entry: _Map, where: str, value_type: ValueType
) -> tuple[str | None, tuple[str, ...]]:
    unit: str | None = None
    if "unit" in entry:
        if value_type not in _UNIT_TYPES:
            check.fail(entry.key_lines["unit"], where, "'unit' is only allowed on int and decimal")
        unit = check.text(entry, "unit", where)
    elif value_type == "decimal":
        check.fail(entry.line, where, "decimal values need a 'unit'")

    values: tuple[str, ...] = ()
    if "values" in entry:
        line = entry.key_lines["values"]
        if value_type != "enum":
            check.fail(line, where, "'values' is only allowed on enum")
        raw = check.sequence(entry["values"], line, f"{where}: 'values'")
        if not raw:
            check.fail(line, where, "'values' must list at least one value")
        seen: list[str] = []
        for position, member in enumerate(raw):
            member_line = raw.item_lines[position]
            if not isinstance(member, str) or not member:
                check.fail(member_line, where, f"'values'[{position}] must be a non-empty string")
            if member in seen:
                check.fail(member_line, where, f"'values'[{position}] duplicates {member!r}")
            seen.append(member)
        values = tuple(seen)
    elif value_type == "enum":
        check.fail(entry.line, where, "enum values need 'values'")
    return unit, values


def _parse_fields(check: _Checker, entry: _Map, where: str) -> tuple[FieldSpec, ...]:
    line = entry.key_lines["fields"]
    raw = check.sequence(entry["fields"], line, f"{where}: 'fields'")
    if not raw:
        check.fail(line, where, "'fields' must list at least one field")
    fields: list[FieldSpec] = []
    for position, raw_field in enumerate(raw):
        field_where = f"{where}: 'fields'[{position}]"
        spec = check.mapping(raw_field, raw.item_lines[position], field_where)
        check.keys(spec, field_where, required=("name", "type"), optional=("unit", "values"))
        name = check.identifier(spec, "name", field_where, _FIELD_NAME, "lower snake case ([a-z][a-z0-9_]*)")
        field_where = f"{where}: field {name!r}"
        if any(existing.name == name for existing in fields):
            check.fail(spec.key_lines["name"], field_where, f"duplicate field name {name!r}")
        field_type = _value_type(check, spec, field_where, allow_records=False)
        assert field_type != "records"
        unit, values = _unit_and_values(check, spec, field_where, field_type)
        fields.append(FieldSpec(name=name, type=field_type, unit=unit, values=values))
    return tuple(fields)


# --- values ----------------------------------------------------------------------------------------


def validate_value(item: CatalogItem, value: object) -> None:
    """Check a JSON-decoded value against its item's declared type; raise, never return a verdict."""
    if item.type != "records":
        if not _SCALAR_OK[item.type](value, item.values):
            raise CatalogValueError(f"data item {item.id!r}: {_scalar_problem(item.type, item.values, value)}")
        return
    if type(value) is not list:
        raise CatalogValueError(f"data item {item.id!r}: expected a list of rows")
    if len(value) > MAX_RECORD_ROWS:
        raise CatalogValueError(f"data item {item.id!r}: more than {MAX_RECORD_ROWS} rows")
    names = {spec.name for spec in item.fields}
    # A department's push checks every row of every history it sends: the quick test per field
    # first, and the worded one only for a value that fails it.
    checks = [(spec.name, _SCALAR_OK[spec.type], spec.values) for spec in item.fields]
    for row_index, row in enumerate(value):
        if type(row) is not dict:
            raise CatalogValueError(f"data item {item.id!r} row {row_index}: expected an object")
        if row.keys() != names:
            missing = [spec.name for spec in item.fields if spec.name not in row]
            if missing:
                raise CatalogValueError(f"data item {item.id!r} row {row_index}: missing field {missing[0]!r}")
            # Undeclared keys are counted, not named: a key could itself carry personal data.
            extra = len(row) - len(names)
            raise CatalogValueError(f"data item {item.id!r} row {row_index}: {extra} undeclared field(s)")
        for name, ok, values in checks:
            if not ok(row[name], values):
                spec = next(spec for spec in item.fields if spec.name == name)
                problem = _scalar_problem(spec.type, spec.values, row[name])
                raise CatalogValueError(f"data item {item.id!r} row {row_index} field {name!r}: {problem}")


def _is_date(value: object) -> bool:
    if type(value) is not str or _DATE.fullmatch(value) is None:
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_text(value: object) -> bool:
    if type(value) is not str or len(value) > MAX_STRING_LENGTH:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


_SCALAR_OK: Final[dict[str, Callable[[object, tuple[str, ...]], bool]]] = {
    "int": lambda v, _: type(v) is int and _INT_MIN <= v <= _INT_MAX,
    "bool": lambda v, _: type(v) is bool,
    "decimal": lambda v, _: type(v) is str and len(v) <= _MAX_DECIMAL_LENGTH and _DECIMAL.fullmatch(v) is not None,
    "date": lambda v, _: _is_date(v),
    "enum": lambda v, values: type(v) is str and v in values,
    "string": lambda v, _: _is_text(v),
}
"""Whether a scalar value is valid for its type, quickly; :func:`_scalar_problem` says why it is not."""


def _scalar_problem(value_type: str, values: tuple[str, ...], value: object) -> str | None:
    """What is wrong with a scalar value, in words that never repeat the value; None if fine."""
    if value_type == "int":
        if type(value) is not int:
            return "expected an integer"
        if not _INT_MIN <= value <= _INT_MAX:
            return "integer outside the signed 64-bit range"
        return None
    if value_type == "bool":
        return None if type(value) is bool else "expected a boolean"
    if not isinstance(value, str):
        return f"expected a {value_type} string"
    if value_type == "decimal":
        if len(value) > _MAX_DECIMAL_LENGTH or _DECIMAL.fullmatch(value) is None:
            return "expected a decimal string such as '1234.56' (at most 4 fraction digits)"
        return None
    if value_type == "date":
        if _DATE.fullmatch(value) is None:
            return "expected a date string 'YYYY-MM-DD'"
        try:
            date.fromisoformat(value)
        except ValueError:
            return "not a real calendar date"
        return None
    if value_type == "enum":
        return None if value in values else "not one of the declared enum values"
    if value_type == "string":
        if len(value) > MAX_STRING_LENGTH:
            return f"string longer than {MAX_STRING_LENGTH} characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "string is not valid Unicode text"
        return None
    return f"unsupported type {value_type!r}"

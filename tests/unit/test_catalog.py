"""The data catalog: the shipped file, the strict loader, and the value wire contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from veilgate.errors import CatalogError, DepartmentUnknown, ItemUnknown, RequestInvalid
from veilgate_server.core import catalog as catalog_module
from veilgate_server.core.catalog import (
    Catalog,
    CatalogItem,
    CatalogValueError,
    FieldSpec,
    ItemId,
    load_catalog,
    parse_catalog,
    validate_value,
)

SHIPPED = Path(__file__).resolve().parents[2] / "policies" / "catalog.yaml"

REQUIRED_DEPARTMENTS = {
    "household_registration",
    "social_insurance",
    "housing_fund",
    "taxation",
    "real_estate",
    "market_regulation",
    "civil_affairs",
    "traffic_police",
    "medical_insurance",
    "court_enforcement",
    "education",
}


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(SHIPPED)


# --- the shipped catalog ---------------------------------------------------------------------------


def test_shipped_catalog_is_large_and_covers_every_department(shipped: Catalog) -> None:
    assert shipped.version == 1
    assert len(shipped.items) >= 40
    assert len(shipped.departments) >= 10
    assert set(shipped.departments) >= REQUIRED_DEPARTMENTS
    for department in shipped.departments:
        assert shipped.items_of(department), f"department {department} owns no item"
    assert sum(len(shipped.items_of(d)) for d in shipped.departments) == len(shipped.items)


def test_shipped_catalog_has_every_sensitivity_and_type(shipped: Catalog) -> None:
    assert {item.sensitivity for item in shipped.items.values()} == {1, 2, 3, 4}
    assert {item.type for item in shipped.items.values()} == {
        "int",
        "decimal",
        "string",
        "date",
        "bool",
        "enum",
        "records",
    }


def test_inpatient_stays_is_a_records_item_with_the_claim_fields(shipped: Catalog) -> None:
    stays = shipped.item("medical_insurance.inpatient_stays")
    assert stays.type == "records"
    assert stays.sensitivity == 4
    fields = {spec.name: spec for spec in stays.fields}
    assert fields["admission_date"].type == "date"
    assert fields["discharge_date"].type == "date"
    assert fields["hospital_code"].type == "string"
    assert fields["hospital_name"].type == "string"
    assert fields["diagnosis_category"].type == "enum"
    assert "circulatory" in fields["diagnosis_category"].values
    for amount in ("total_amount", "fund_paid_amount", "self_paid_amount"):
        assert fields[amount].type == "decimal"
        assert fields[amount].unit == "CNY"


def test_histories_and_absence_are_representable(shipped: Catalog) -> None:
    history = shipped.item("social_insurance.pension_contribution_history")
    assert {spec.name: spec.type for spec in history.fields}["paid"] == "bool"
    assert {spec.name: spec.type for spec in history.fields}["month"] == "date"
    assert "none" in shipped.item("market_regulation.business_status").values
    business = shipped.item("market_regulation.business_registrations")
    assert {spec.name for spec in business.fields} >= {"status", "registered_capital", "established_date"}
    assert shipped.item("household_registration.hukou_type").values == ("urban", "rural")


def test_ids_are_prefixed_by_their_department(shipped: Catalog) -> None:
    for item in shipped.items.values():
        assert re.fullmatch(r"[a-z0-9_.]+", item.id)
        assert item.id.split(".", 1)[0] == item.department


def test_lookups_raise_the_wire_errors(shipped: Catalog) -> None:
    with pytest.raises(ItemUnknown, match=r"unknown data item 'tax\.nope'"):
        shipped.item("tax.nope")
    with pytest.raises(DepartmentUnknown):
        shipped.department("weather")
    with pytest.raises(DepartmentUnknown):
        shipped.items_of("weather")
    assert shipped.department("taxation").name_zh


def test_catalog_mappings_are_read_only(shipped: Catalog) -> None:
    with pytest.raises(TypeError):
        shipped.items[ItemId("x.y")] = shipped.item("taxation.tax_arrears")  # type: ignore[index]


# --- the strict loader -----------------------------------------------------------------------------

GOOD = """\
version: 1
departments:
  - id: tax
    name_en: Tax
    name_zh: 税务
  - id: med
    name_en: Medical
    name_zh: 医保
items:
  - id: tax.income
    department: tax
    type: decimal
    unit: CNY
    sensitivity: 3
    name_en: Income
    name_zh: 收入
  - id: med.stays
    department: med
    type: records
    fields:
      - {name: admitted, type: date}
      - {name: category, type: enum, values: [a, b]}
    sensitivity: 4
    name_en: Stays
    name_zh: 住院
"""


def _replace(old: str, new: str) -> str:
    assert GOOD.count(old) == 1, old
    return GOOD.replace(old, new)


def test_good_file_parses_in_order(tmp_path: Path) -> None:
    path = tmp_path / "cat.yaml"
    path.write_text(GOOD, encoding="utf-8")
    catalog = load_catalog(path)
    assert list(catalog.items) == ["tax.income", "med.stays"]
    assert list(catalog.departments) == ["tax", "med"]
    assert catalog.item("med.stays").fields == (
        FieldSpec(name="admitted", type="date", unit=None, values=()),
        FieldSpec(name="category", type="enum", unit=None, values=("a", "b")),
    )
    assert catalog.items_of("tax") == (catalog.item("tax.income"),)


# Each bad file: the entry, the line and the problem the message must name.
BAD_FILES = [
    pytest.param(
        _replace("    unit: CNY\n", "    unit: CNY\n    unit: EUR\n"),
        "items[0] ('tax.income')",
        14,
        "duplicate key 'unit'",
        id="duplicate key",
    ),
    pytest.param(
        _replace("    unit: CNY\n", "    unit: CNY\n    colour: red\n"),
        "items[0] ('tax.income')",
        14,
        "unknown key 'colour'",
        id="unknown item key",
    ),
    pytest.param(
        _replace("    name_en: Tax\n", "    name_en: Tax\n    chief: x\n"),
        "departments[0] ('tax')",
        5,
        "unknown key 'chief'",
        id="unknown department key",
    ),
    pytest.param(
        _replace("{name: admitted, type: date}", "{name: admitted, type: date, note: x}"),
        "items[1] ('med.stays')",
        21,
        "unknown key 'note'",
        id="unknown field key",
    ),
    pytest.param(GOOD + "extra: 1\n", "document", 26, "unknown key 'extra'", id="unknown top-level key"),
    pytest.param(
        _replace("    name_zh: 收入\n", ""),
        "items[0] ('tax.income')",
        10,
        "missing required key 'name_zh'",
        id="missing key",
    ),
    pytest.param(GOOD[: GOOD.index("items:")], "document", 1, "missing required key 'items'", id="missing items"),
    pytest.param(_replace("version: 1", "version: 2"), "document", 1, "'version' must be 1", id="wrong version"),
    pytest.param(_replace("version: 1", "version: '1'"), "document", 1, "'version' must be 1", id="version as string"),
    pytest.param(
        _replace("sensitivity: 3", "sensitivity: 5"),
        "items[0] ('tax.income')",
        14,
        "'sensitivity' must be an integer 1 to 4",
        id="sensitivity too high",
    ),
    pytest.param(
        _replace("sensitivity: 3", "sensitivity: 0"),
        "items[0] ('tax.income')",
        14,
        "'sensitivity'",
        id="sensitivity zero",
    ),
    pytest.param(
        _replace("sensitivity: 3", "sensitivity: true"),
        "items[0] ('tax.income')",
        14,
        "'sensitivity'",
        id="sensitivity bool",
    ),
    pytest.param(
        _replace("id: med.stays", "id: tax.income").replace(
            "department: med\n    type: records", "department: tax\n    type: records"
        ),
        "items[1] ('tax.income')",
        17,
        "duplicate item id",
        id="duplicate item id",
    ),
    pytest.param(
        _replace("id: med\n", "id: tax\n"),
        "departments[1] ('tax')",
        6,
        "duplicate department id",
        id="duplicate department",
    ),
    pytest.param(
        _replace("department: med", "department: weather"),
        "items[1] ('med.stays')",
        18,
        "'weather' is not declared",
        id="undeclared department",
    ),
    pytest.param(
        _replace("id: med.stays", "id: tax.stays"),
        "items[1] ('tax.stays')",
        17,
        "must start with its department 'med'",
        id="id not prefixed by department",
    ),
    pytest.param(
        _replace("id: tax.income", "id: Tax.Income"),
        "items[0] ('Tax.Income')",
        10,
        "'id' must be a dotted id",
        id="bad item id",
    ),
    pytest.param(
        _replace("id: tax.income", "id: income"),
        "items[0] ('income')",
        10,
        "'id' must be a dotted id",
        id="item id without dot",
    ),
    pytest.param(
        _replace("id: med\n", "id: Med-1\n"),
        "departments[1] ('Med-1')",
        6,
        "'id' must be lower snake case",
        id="bad department id",
    ),
    pytest.param(
        _replace("type: decimal", "type: float"),
        "items[0] ('tax.income')",
        12,
        "'type' must be one of",
        id="unknown type",
    ),
    pytest.param(
        _replace("    unit: CNY\n", ""),
        "items[0] ('tax.income')",
        10,
        "decimal values need a 'unit'",
        id="decimal without unit",
    ),
    pytest.param(
        _replace("type: decimal", "type: string"),
        "items[0] ('tax.income')",
        13,
        "'unit' is only allowed on int and decimal",
        id="unit on a string",
    ),
    pytest.param(
        _replace("{name: category, type: enum, values: [a, b]}", "{name: category, type: enum}"),
        "items[1] ('med.stays')",
        22,
        "enum values need 'values'",
        id="enum without values",
    ),
    pytest.param(
        _replace("values: [a, b]", "values: []"),
        "items[1] ('med.stays')",
        22,
        "'values' must list at least one value",
        id="enum with no values",
    ),
    pytest.param(
        _replace("values: [a, b]", "values: [a, a]"),
        "items[1] ('med.stays')",
        22,
        "'values'[1] duplicates 'a'",
        id="duplicate enum values",
    ),
    pytest.param(
        _replace("values: [a, b]", "values: [a, 3]"),
        "items[1] ('med.stays')",
        22,
        "'values'[1] must be a non-empty string",
        id="non-string enum value",
    ),
    pytest.param(
        _replace("    unit: CNY\n", "    unit: CNY\n    values: [a]\n"),
        "items[0] ('tax.income')",
        14,
        "'values' is only allowed on enum",
        id="values on a decimal",
    ),
    pytest.param(
        _replace(
            "    fields:\n      - {name: admitted, type: date}\n      - {name: category, type: enum, values: [a, b]}\n",
            "",
        ),
        "items[1] ('med.stays')",
        17,
        "records items need 'fields'",
        id="records without fields",
    ),
    pytest.param(
        _replace(
            "    fields:\n      - {name: admitted, type: date}\n      - {name: category, type: enum, values: [a, b]}\n",
            "    fields: []\n",
        ),
        "items[1] ('med.stays')",
        20,
        "'fields' must list at least one field",
        id="records with no fields",
    ),
    pytest.param(
        _replace("{name: admitted, type: date}", "{name: admitted, type: records}"),
        "items[1] ('med.stays')",
        21,
        "cannot be nested",
        id="nested records",
    ),
    pytest.param(
        _replace("{name: category, type: enum", "{name: admitted, type: enum"),
        "items[1] ('med.stays')",
        22,
        "duplicate field name 'admitted'",
        id="duplicate field",
    ),
    pytest.param(
        _replace("{name: admitted, type: date}", "{name: Admitted, type: date}"),
        "items[1] ('med.stays')",
        21,
        "'name' must be lower snake case",
        id="bad field name",
    ),
    pytest.param(
        _replace("    unit: CNY\n", "    unit: CNY\n    fields: []\n"),
        "items[0] ('tax.income')",
        14,
        "'fields' is only allowed on records items",
        id="fields on a scalar",
    ),
    pytest.param(
        _replace("name_en: Income", "name_en: [Income]"),
        "items[0] ('tax.income')",
        15,
        "'name_en' must be a non-empty string",
        id="name is not a string",
    ),
    pytest.param(
        _replace("name_zh: 收入", "name_zh: ''"),
        "items[0] ('tax.income')",
        16,
        "'name_zh' must be a non-empty string",
        id="empty name",
    ),
    pytest.param(
        _replace("items:\n", "items:\n  - just a string\n"),
        "items[0]",
        10,
        "must be a mapping",
        id="item is not a mapping",
    ),
    pytest.param(
        GOOD[: GOOD.index("items:")] + "items: {}\n", "'items'", 9, "must be a list", id="items is not a list"
    ),
    pytest.param(
        _replace("    unit: CNY\n", "    <<: {unit: CNY}\n"),
        "items[0] ('tax.income')",
        13,
        "merge keys ('<<') are not allowed",
        id="merge key",
    ),
    pytest.param(
        _replace("name_en: Income", "name_en: 2024-13-45"),
        "items[0] ('tax.income')",
        15,
        "invalid timestamp",
        id="invalid timestamp scalar",
    ),
    pytest.param(
        _replace("    unit: CNY\n", "    unit: CNY\n    7: x\n"),
        "items[0] ('tax.income')",
        14,
        "key 7 is not a string",
        id="non-string key",
    ),
]


@pytest.mark.parametrize(("text", "entry", "line", "problem"), BAD_FILES)
def test_bad_file_fails_naming_file_entry_and_line(
    tmp_path: Path, text: str, entry: str, line: int, problem: str
) -> None:
    path = tmp_path / "bad-catalog.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert entry in message, message
    assert problem in message, message
    assert caught.value.reason == "CATALOG_INVALID"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "the catalog is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("version: 1\n---\nversion: 1\n", "invalid YAML"),
        ("version: [1\n", "invalid YAML"),
        ("a: &x [*x]\n", "invalid YAML"),
        ("\x00", "invalid YAML"),
        ("version: !!python/object:os.system {}\n", "invalid YAML"),
    ],
)
def test_malformed_yaml_is_a_catalog_error(text: str, problem: str) -> None:
    with pytest.raises(CatalogError, match=re.escape(problem)) as caught:
        parse_catalog(text, source="conf/catalog.yaml")
    assert str(caught.value).startswith("conf/catalog.yaml")


def test_unreadable_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.yaml")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name_zh: caf\xe9\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog(latin1)


def _parse_error(text: str) -> str | None:
    """The CatalogError message for a text, None if it parsed; any other exception propagates."""
    try:
        parse_catalog(text, source="fuzz.yaml")
    except CatalogError as e:
        return str(e)
    return None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_catalog_error(text: str) -> None:
    message = _parse_error(text)
    assert message is None or message.startswith("fuzz.yaml")


_yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_entry_keys = st.sampled_from(
    ["id", "department", "type", "sensitivity", "name_en", "name_zh", "unit", "values", "fields", "name"]
)


@settings(max_examples=200, deadline=None)
@given(
    departments=st.lists(st.dictionaries(_entry_keys, _yaml_values, max_size=5), max_size=3),
    items=st.lists(st.dictionaries(_entry_keys, _yaml_values, max_size=9), max_size=3),
)
def test_arbitrary_structures_only_ever_raise_catalog_error(departments: list[object], items: list[object]) -> None:
    text = yaml.safe_dump({"version": 1, "departments": departments, "items": items}, allow_unicode=True)
    message = _parse_error(text)
    assert message is None or message.startswith("fuzz.yaml")


# --- values ----------------------------------------------------------------------------------------


def _item(value_type: str, **extra: object) -> CatalogItem:
    return CatalogItem(
        id=ItemId("test.item"),
        department=extra.pop("department", "test"),  # type: ignore[arg-type]
        type=value_type,  # type: ignore[arg-type]
        sensitivity=2,
        name_en="Test",
        name_zh="测试",
        unit=extra.pop("unit", None),  # type: ignore[arg-type]
        values=extra.pop("values", ()),  # type: ignore[arg-type]
        fields=extra.pop("fields", ()),  # type: ignore[arg-type]
    )


ROWS = _item(
    "records",
    fields=(
        FieldSpec(name="month", type="date", unit=None, values=()),
        FieldSpec(name="amount", type="decimal", unit="CNY", values=()),
        FieldSpec(name="paid", type="bool", unit=None, values=()),
    ),
)
ITEMS = {
    "int": _item("int"),
    "decimal": _item("decimal", unit="CNY"),
    "string": _item("string"),
    "date": _item("date"),
    "bool": _item("bool"),
    "enum": _item("enum", values=("urban", "rural")),
    "records": ROWS,
}

GOOD_VALUES = [
    ("int", 0),
    ("int", -5),
    ("int", 2**63 - 1),
    ("decimal", "0"),
    ("decimal", "1234.5"),
    ("decimal", "-0.0001"),
    ("decimal", "98765.4321"),
    ("string", ""),
    ("string", "济南市历下区"),
    ("string", "x" * 1000),
    ("date", "2024-02-29"),
    ("date", "1956-01-01"),
    ("bool", True),
    ("bool", False),
    ("enum", "rural"),
    ("records", []),
    ("records", [{"month": "2026-09-01", "amount": "4416.00", "paid": False}]),
    ("records", [{"month": "2026-09-01", "amount": "1", "paid": True}] * 1000),
]
BAD_VALUES = [
    ("int", True),
    ("int", 1.0),
    ("int", "1"),
    ("int", 2**63),
    ("int", None),
    ("decimal", 12.5),
    ("decimal", 12),
    ("decimal", "012"),
    ("decimal", "1.23456"),
    ("decimal", "1."),
    ("decimal", ".5"),
    ("decimal", "+1"),
    ("decimal", "1e3"),
    ("decimal", "1 "),
    ("decimal", "12\n"),
    ("decimal", "١٢"),
    ("decimal", "9" * 40),
    ("string", "x" * 1001),
    ("string", "\ud800"),
    ("string", b"bytes"),
    ("string", None),
    ("date", "2023-02-29"),
    ("date", "2024-1-01"),
    ("date", "20240101"),
    ("date", "2024-01-01T00:00:00"),
    ("date", "0000-01-01"),
    ("date", "２０２４-01-01"),
    ("bool", 1),
    ("bool", "true"),
    ("enum", "URBAN"),
    ("enum", 0),
    ("records", {}),
    ("records", ({"month": "2026-09-01", "amount": "1", "paid": True},)),
    ("records", ["row"]),
    ("records", [{"month": "2026-09-01", "amount": "1"}]),
    ("records", [{"month": "2026-09-01", "amount": "1", "paid": True, "note": ""}]),
    ("records", [{"month": "2026-09-01", "amount": 1, "paid": True}]),
    ("records", [{"month": "2026-09-01", "amount": "1", "paid": True}] * 1001),
]


@pytest.mark.parametrize(("kind", "value"), GOOD_VALUES)
def test_validate_value_accepts(kind: str, value: object) -> None:
    validate_value(ITEMS[kind], value)


@pytest.mark.parametrize(("kind", "value"), BAD_VALUES)
def test_validate_value_rejects(kind: str, value: object) -> None:
    with pytest.raises(CatalogValueError) as caught:
        validate_value(ITEMS[kind], value)
    assert "'test.item'" in str(caught.value)
    assert isinstance(caught.value, RequestInvalid)
    assert caught.value.reason == "RECORD_VALUE_INVALID"


def test_record_errors_name_row_and_field() -> None:
    rows = [
        {"month": "2026-08-01", "amount": "1.00", "paid": True},
        {"month": "2026-09-01", "amount": "1.00", "paid": "yes"},
    ]
    with pytest.raises(CatalogValueError, match=r"'test.item' row 1 field 'paid': expected a boolean"):
        validate_value(ROWS, rows)
    with pytest.raises(CatalogValueError, match=r"row 0: missing field 'paid'"):
        validate_value(ROWS, [{"month": "2026-08-01", "amount": "1.00"}])


SECRET = "ID-370102198001011234-秘密"


@pytest.mark.parametrize("kind", sorted(ITEMS))
def test_value_never_appears_in_the_error(kind: str) -> None:
    cases: list[object] = [SECRET, [SECRET], {SECRET: SECRET}, 10**30]
    if kind == "records":
        cases += [
            [{"month": SECRET, "amount": "1", "paid": True}],
            [{"month": "2026-09-01", "amount": SECRET, "paid": True}],
            [{"month": "2026-09-01", "amount": "1", "paid": True, SECRET: SECRET}],
            [{"month": "2026-09-01", SECRET: "1", "paid": True}],
        ]
    for value in cases:
        if kind == "string" and value == SECRET:
            continue
        with pytest.raises(CatalogValueError) as caught:
            validate_value(ITEMS[kind], value)
        assert "ID-3701" not in str(caught.value)
        assert "秘密" not in str(caught.value)
        assert str(10**30) not in str(caught.value)


# Everything an error message may say without echoing a value: the validator's own wording and the
# declarations of the items under test. A value that is a piece of this text ('decima', '1234.5')
# would be "found" in a message that never echoed it.
WORDING = Path(catalog_module.__file__).read_text(encoding="utf-8") + repr(ITEMS)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(ITEMS)), value=st.text(min_size=6, max_size=40))
def test_value_never_appears_in_the_error_for_any_text(kind: str, value: str) -> None:
    assume(value not in WORDING)
    for candidate in (value, [{"month": value, "amount": value, "paid": value}], -int.from_bytes(value.encode())):
        try:
            validate_value(ITEMS[kind], candidate)
            message = ""
        except CatalogValueError as e:
            message = str(e)
        assert value not in message
        assert str(candidate) not in message


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.text(alphabet="0123456789.-", max_size=40)
    | st.dates().map(lambda d: d.isoformat())
    | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", fullmatch=True)
    | st.text(alphabet="\ud800x", min_size=1, max_size=3)  # lone surrogates, as a JSON escape decodes them
    | st.sampled_from(["a", "b", "1000" * 251, "x" * 1001])
)


@settings(max_examples=500, deadline=None)
@given(value=_JSON_SCALARS, value_type=st.sampled_from(["int", "bool", "decimal", "date", "enum", "string"]))
def test_the_quick_scalar_check_agrees_with_the_worded_one(value: object, value_type: str) -> None:
    """validate_value checks every value quickly and words only a failure: the two must agree."""
    values = ("a", "b")
    quick = catalog_module._SCALAR_OK[value_type](value, values)
    assert quick == (catalog_module._scalar_problem(value_type, values, value) is None)

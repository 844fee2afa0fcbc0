"""The policy engine: load-time type checks, decisions, reasons, guards and a privacy property."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from cel_expr_python import cel
from hypothesis import given, settings
from hypothesis import strategies as st

from veilgate._internal.jose import canonical_json
from veilgate.errors import ConfigurationError
from veilgate_server.config import default_policies_dir
from veilgate_server.core.catalog import (
    MAX_RECORD_ROWS,
    Catalog,
    CatalogItem,
    CatalogValueError,
    ScalarType,
    _scalar_problem,
    load_catalog,
    parse_catalog,
    validate_value,
)
from veilgate_server.core.policy import (
    EVALUATION_ERROR,
    Parameter,
    Policy,
    PolicyInvalid,
    PolicyParameterInvalid,
    _parameter_values,
    _rows_from_text,
    _scalar_reader,
    date_to_days,
    evaluate,
    evaluate_stored,
    load_policies,
    load_policy,
    policy_sources,
)
from veilgate_server.governance import policy_files
from veilgate_server.policy_tests import run_policy_tests
from veilgate_server.seed import DEFAULT_AS_OF, generate_population

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(POLICIES / "catalog.yaml")


BASE = """\
id: credit.test_loan
version: 1
description: test
purpose: credit.consumer_loan
institution_kinds: [bank]
inputs:
  - taxation.arrears_outstanding
  - court_enforcement.on_dishonest_list
  - social_insurance.cumulative_contribution_months
parameters:
  band: {values: [low, high]}
rules:
  - {id: a, description: a, reason: ARREARS, effect: refer, rank: 3, passes: "!taxation.arrears_outstanding"}
  - {id: b, description: b, reason: DISHONEST, effect: decline, rank: 1, passes: "!court_enforcement.on_dishonest_list"}
  - id: c
    description: c
    reason: SHORT
    effect: refer
    rank: 2
    passes: "RULE_C"
bands:
  size:
    - {band: big, when: "params.band == 'high'"}
    - {band: small, when: "true"}
"""


def _write(tmp_path: Path, rule_c: str = "social_insurance.cumulative_contribution_months >= 12") -> Path:
    directory = tmp_path / "credit" / "test_loan" / "v1"
    directory.mkdir(parents=True)
    (directory / "policy.yaml").write_text(BASE.replace("RULE_C", rule_c), encoding="utf-8")
    return directory


def _records(arrears: bool = False, dishonest: bool = False, months: object = 40) -> dict[str, tuple[date, object]]:
    day = date(2026, 10, 20)
    return {
        "taxation.arrears_outstanding": (day, arrears),
        "court_enforcement.on_dishonest_list": (day, dishonest),
        "social_insurance.cumulative_contribution_months": (day, months),
    }


def test_shipped_policies_load(catalog: Catalog) -> None:
    policies = load_policies(POLICIES, catalog)
    assert set(policies) == {
        "credit.consumer_loan",
        "credit.sme_loan",
        "credit.mortgage_prequal",
        "insurance.inpatient_claim",
        "insurance.health_underwriting",
    }


def test_sha256_is_over_the_exact_file_bytes(catalog: Catalog) -> None:
    for policy in load_policies(POLICIES, catalog).values():
        assert policy.sha256 == hashlib.sha256(policy.source.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("social_insurance.cumulative_contribution_months >= 'twelve'", "no matching overload"),
        ("social_insurance.cumulative_contribtion_months >= 12", "undeclared reference"),
        ("params.bnd == 'low'", "undeclared reference"),
        ("social_insurance.cumulative_contribution_months", "must be bool"),
    ],
)
def test_type_errors_fail_at_load_naming_file_and_line(
    tmp_path: Path, catalog: Catalog, expression: str, needle: str
) -> None:
    directory = _write(tmp_path, expression)
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(directory, catalog)
    assert f"{directory / 'policy.yaml'}:20:" in caught.value.message
    assert needle in caught.value.message


def test_misspelled_record_field_fails_at_load(tmp_path: Path, catalog: Catalog) -> None:
    text = BASE.replace("- social_insurance.cumulative_contribution_months", "- taxation.tax_arrears").replace(
        "RULE_C", "taxation.tax_arrears.all(t, t.ammount < 10.0)"
    )
    directory = tmp_path / "credit" / "test_loan" / "v1"
    directory.mkdir(parents=True)
    (directory / "policy.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(PolicyInvalid, match=r"policy\.yaml:20: .*undefined field 'ammount'"):
        load_policy(directory, catalog)


def test_unknown_input_and_unknown_key_fail(tmp_path: Path, catalog: Catalog) -> None:
    directory = _write(tmp_path)
    path = directory / "policy.yaml"
    path.write_text(
        BASE.replace("- taxation.arrears_outstanding", "- taxation.no_such_item").replace("RULE_C", "true"),
        encoding="utf-8",
    )
    with pytest.raises(PolicyInvalid, match=r"policy\.yaml:7: .*unknown catalog item 'taxation.no_such_item'"):
        load_policy(directory, catalog)
    path.write_text(BASE.replace("RULE_C", "true") + "thresholds: {}\n", encoding="utf-8")
    with pytest.raises(PolicyInvalid, match="unknown key 'thresholds'"):
        load_policy(directory, catalog)


def test_every_rule_is_evaluated_and_reasons_are_ranked(tmp_path: Path, catalog: Catalog) -> None:
    policy = load_policy(_write(tmp_path), catalog)
    ok = evaluate(policy, records=_records(), params={"band": "high"}, as_of=DEFAULT_AS_OF)
    assert (ok.decision, dict(ok.bands), ok.reasons) == ("ELIGIBLE", {"size": "big"}, ())
    assert dict(ok.data_as_of) == {
        "taxation": "2026-10-20",
        "court_enforcement": "2026-10-20",
        "social_insurance": "2026-10-20",
    }
    bad = evaluate(policy, records=_records(True, True, 3), params={"band": "low"}, as_of=DEFAULT_AS_OF)
    assert (bad.decision, bad.reasons) == ("NOT_ELIGIBLE", ("DISHONEST", "SHORT", "ARREARS"))
    refer = evaluate(policy, records=_records(arrears=True), params={"band": "low"}, as_of=DEFAULT_AS_OF)
    assert (refer.decision, refer.reasons) == ("REFER", ("ARREARS",))


def test_reasons_are_capped_at_four(catalog: Catalog) -> None:
    policy = load_policies(POLICIES, catalog)["credit.mortgage_prequal"]
    day = date(2026, 10, 20)
    records: dict[str, tuple[date, object]] = {
        "housing_fund.account_status": (day, "closed"),
        "housing_fund.consecutive_deposit_months": (day, 0),
        "housing_fund.balance": (day, "0.00"),
        "real_estate.property_count": (day, 4),
        "real_estate.mortgage_registrations": (day, []),
        "real_estate.seizure_registered": (day, True),
        "court_enforcement.on_dishonest_list": (day, True),
    }
    outcome = evaluate(policy, records=records, params={"home_type": "first_home"}, as_of=DEFAULT_AS_OF)
    assert outcome.reasons == ("DISHONEST_DEBTOR_LISTED", "PROPERTY_SEIZED", "PROPERTY_LIMIT_REACHED", "NOT_FIRST_HOME")


def test_missing_data_refers_without_evaluating(tmp_path: Path, catalog: Catalog) -> None:
    policy = load_policy(_write(tmp_path), catalog)
    records = _records(dishonest=True)
    del records["taxation.arrears_outstanding"]
    outcome = evaluate(policy, records=records, params={"band": "low"}, as_of=DEFAULT_AS_OF)
    assert (outcome.decision, outcome.reasons, dict(outcome.bands)) == ("REFER", ("DATA_UNAVAILABLE_TAXATION",), {})


@pytest.mark.parametrize(
    "expression",
    [
        "100 / (social_insurance.cumulative_contribution_months - 40) > 0",  # ERROR value, not raised
        "[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c,"
        " [1,2,3,4,5,6,7,8,9,10].all(d, [1,2,3,4,5,6,7,8,9,10].all(e, a + b + c + d + e > 0)))))",  # budget
    ],
)
def test_erroring_expression_refers_with_evaluation_error(tmp_path: Path, catalog: Catalog, expression: str) -> None:
    policy = load_policy(_write(tmp_path, expression), catalog)
    outcome = evaluate(policy, records=_records(dishonest=True), params={"band": "low"}, as_of=DEFAULT_AS_OF)
    assert (outcome.decision, outcome.reasons, dict(outcome.bands)) == ("REFER", ("EVALUATION_ERROR",), {})


def test_malformed_stored_value_is_an_evaluation_error(tmp_path: Path, catalog: Catalog) -> None:
    policy = load_policy(_write(tmp_path), catalog)
    outcome = evaluate(policy, records=_records(months="40"), params={"band": "low"}, as_of=DEFAULT_AS_OF)
    assert outcome.reasons == ("EVALUATION_ERROR",)


@pytest.mark.parametrize("params", [{}, {"band": "medium"}, {"band": "low", "threshold": "5000"}])
def test_bad_parameters_raise(tmp_path: Path, catalog: Catalog, params: dict[str, str]) -> None:
    policy = load_policy(_write(tmp_path), catalog)
    with pytest.raises(PolicyParameterInvalid):
        evaluate(policy, records=_records(), params=params, as_of=DEFAULT_AS_OF)


def test_claim_parameters_are_bounded(catalog: Catalog) -> None:
    policy = load_policies(POLICIES, catalog)["insurance.inpatient_claim"]
    records: dict[str, tuple[date, object]] = {"medical_insurance.inpatient_stays": (date(2026, 10, 1), [])}
    good = {
        "claimed_admission_date": "2026-05-10",
        "claimed_discharge_date": "2026-05-18",
        "hospital_code": "H37010200015",
    }
    assert evaluate(policy, records=records, params=good, as_of=DEFAULT_AS_OF).reasons == ("NO_MATCHING_STAY",)
    for name, value in [("hospital_code", "H3701020001' || true"), ("claimed_admission_date", "2026-02-30")]:
        with pytest.raises(PolicyParameterInvalid):
            evaluate(policy, records=records, params={**good, name: value}, as_of=DEFAULT_AS_OF)


def _seed_params(policy_id: str) -> dict[str, str]:
    return {
        "credit.consumer_loan": {"requested_amount_band": "50k_to_200k"},
        "credit.sme_loan": {"requested_amount_band": "up_to_300k"},
        "credit.mortgage_prequal": {"home_type": "first_home"},
        "insurance.inpatient_claim": {
            "claimed_admission_date": "2026-03-01",
            "claimed_discharge_date": "2026-03-08",
            "hospital_code": "H37010200015",
        },
        "insurance.health_underwriting": {},
    }[policy_id]


def test_seeded_population_gives_a_mix_of_decisions(catalog: Catalog) -> None:
    policies = load_policies(POLICIES, catalog)
    mix: dict[str, Counter[str]] = {policy_id: Counter() for policy_id in policies}
    for citizen in generate_population(catalog, citizens=100, seed=7):
        records = {str(r.item_id): (r.as_of, r.value) for r in citizen.records}
        for policy_id, policy in policies.items():
            outcome = evaluate(policy, records=records, params=_seed_params(policy_id), as_of=DEFAULT_AS_OF)
            assert "EVALUATION_ERROR" not in outcome.reasons
            mix[policy_id][outcome.decision] += 1
    print({k: dict(v) for k, v in mix.items()})
    for policy_id in (
        "credit.consumer_loan",
        "credit.sme_loan",
        "credit.mortgage_prequal",
        "insurance.health_underwriting",
    ):
        assert len(mix[policy_id]) >= 2, (policy_id, mix[policy_id])


def test_incomes_in_the_same_band_give_identical_outcomes(catalog: Catalog) -> None:
    policy = load_policies(POLICIES, catalog)["credit.consumer_loan"]
    day = date(2026, 10, 20)

    def outcome_for(income: str) -> bytes:
        history = [
            {"month": f"{y}-{m:02d}-01", "gross_income": income, "tax_withheld": "100.00"}
            for y, m in [(2025, m) for m in range(1, 13)] + [(2026, m) for m in range(1, 10)]
        ]
        records: dict[str, tuple[date, object]] = {
            "social_insurance.insured_status": (day, "contributing"),
            "social_insurance.pension_contribution_history": (day, []),
            "taxation.monthly_income_history": (day, history),
            "taxation.arrears_outstanding": (day, False),
            "court_enforcement.enforcement_cases": (day, []),
            "court_enforcement.on_dishonest_list": (day, False),
        }
        outcome = evaluate(policy, records=records, params={"requested_amount_band": "up_to_50k"}, as_of=DEFAULT_AS_OF)
        return repr(
            (outcome.decision, sorted(outcome.bands.items()), outcome.reasons, sorted(outcome.data_as_of.items()))
        ).encode()

    assert outcome_for("12345.67") == outcome_for("13999.99")
    assert outcome_for("12345.67") != outcome_for("31000.00")


# --- the input readers agree with the catalog --------------------------------------------------------


@pytest.fixture(scope="module")
def shipped(catalog: Catalog) -> dict[str, Policy]:
    return load_policies(POLICIES, catalog)


def _scalars(kind: str, values: tuple[str, ...]) -> st.SearchStrategy[object]:
    """Values of ``kind`` the catalog accepts, mixed with near misses and values of other types."""
    valid: dict[str, st.SearchStrategy[object]] = {
        "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "bool": st.booleans(),
        "decimal": st.from_regex(r"-?(0|[1-9][0-9]{0,8})(\.[0-9]{1,4})?", fullmatch=True),
        "date": st.dates().map(date.isoformat),
        "enum": st.sampled_from(values or ("none",)),
        "string": st.text(max_size=12),
    }
    wrong = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.from_regex(r"-?[0-9]{1,3}(\.[0-9]{0,6})?|[0-9]{4}-[0-9]{2}-[0-9]{2}|0[0-9]+|[0-9.e+-]{1,6}", fullmatch=True),
        st.text(max_size=8),
        st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),  # not encodable text
        st.just("x" * 1001),
        st.just("1" * 33),
        st.lists(st.integers(), max_size=2),
    )
    return st.one_of(valid[kind], wrong)


def _input_values(item: CatalogItem) -> st.SearchStrategy[object]:
    if item.type != "records":
        return _scalars(item.type, item.values)
    row = st.fixed_dictionaries({spec.name: _scalars(spec.type, spec.values) for spec in item.fields})
    near_rows = st.one_of(
        row,
        row.map(lambda r: {**r, "undeclared": 1}),
        row.map(lambda r: dict(list(r.items())[1:])),
        st.integers(),
    )
    return st.one_of(st.lists(row, max_size=3), st.lists(near_rows, max_size=3), st.none(), st.text(max_size=4))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_input_readers_accept_exactly_what_the_catalog_accepts(shipped: dict[str, Policy], data: st.DataObject) -> None:
    """Each policy reads its inputs in one pass that both checks (as ``validate_value``) and makes
    the CEL value. It must refuse exactly what the catalog refuses, and make what the two passes
    made: decimals as doubles, dates as days since 1970-01-01, rows as maps of the item's fields."""
    policy = data.draw(st.sampled_from(sorted(shipped.values(), key=lambda p: p.id)))
    item = data.draw(st.sampled_from(policy.inputs))
    value = data.draw(_input_values(item))
    read = policy._compiled.readers[item.id]
    try:
        validate_value(item, value)
    except CatalogValueError:
        with pytest.raises(CatalogValueError):
            read(value)
        return
    converted = read(value)

    def expected(kind: str, raw: object) -> object:
        if kind == "decimal":
            return float(str(raw))
        if kind == "date":
            return date_to_days(date.fromisoformat(str(raw)))
        return raw

    if item.type != "records":
        assert converted == expected(item.type, value)
        assert type(converted) is type(expected(item.type, value))
        return
    assert isinstance(value, list)
    assert isinstance(converted, list)
    assert len(converted) == len(value)
    for row, made in zip(value, converted, strict=True):
        assert list(made) == [spec.name for spec in item.fields]
        for spec in item.fields:
            # The exact type too: CEL types a map's values by their Python type, so an int where a
            # double is declared would make ``r.amount >= 4000.0`` an error at run time.
            assert made[spec.name] == expected(spec.type, row[spec.name])
            assert type(made[spec.name]) is type(expected(spec.type, row[spec.name]))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["int", "bool", "decimal", "date", "enum", "string"]))
def test_scalar_readers_refuse_exactly_what_the_catalog_refuses(data: st.DataObject, kind: ScalarType) -> None:
    """Every scalar type, whether or not a shipped policy reads it today."""
    values = ("low", "high")
    value = data.draw(_scalars(kind, values))
    read = _scalar_reader("some.item", kind, values)
    if _scalar_problem(kind, values, value) is not None:
        with pytest.raises(CatalogValueError):
            read(value)
    else:
        read(value)


# --- inputs read from the store's canonical JSON text ----------------------------------------------


def _read(read: object, value: object) -> tuple[str, object]:
    """What a reader makes of a value: ("ok", CEL value) or ("refused", None)."""
    try:
        return "ok", read(value)  # type: ignore[operator]
    except (CatalogValueError, ValueError, RecursionError):
        return "refused", None


def _stored_texts(value: object) -> st.SearchStrategy[str]:
    """The value as the store keeps it (canonical JSON), as other JSON spells it, and damaged."""
    spelled = [json.dumps(value), json.dumps(value, indent=1), json.dumps(value, sort_keys=True)]
    with contextlib.suppress(TypeError, ValueError):  # NaN and such have no canonical spelling
        spelled.append(canonical_json(value).decode())
    text = st.sampled_from(spelled)
    damaged = st.tuples(text, st.integers(0, 10_000), st.integers(0, 3), st.text(max_size=3)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[3] + t[0][t[1] % (len(t[0]) + 1) + t[2] :]
    )
    return st.one_of(text, text, damaged)


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_stored_readers_read_text_as_decoding_it_does(shipped: dict[str, Policy], data: st.DataObject) -> None:
    """The gateway hands a policy each value's stored text; the policy must make of it exactly what
    decoding the JSON and reading the value makes, accepted or refused, for any text at all."""
    policy = data.draw(st.sampled_from(sorted(shipped.values(), key=lambda p: p.id)))
    item = data.draw(st.sampled_from(policy.inputs))
    value = data.draw(st.one_of(_input_values(item), _valid_input(item)))
    text = data.draw(_stored_texts(value))
    read = policy._compiled.readers[item.id]

    def decoded(text: str) -> object:
        return read(json.loads(text))

    assert _read(policy._compiled.stored_readers[item.id], text) == _read(decoded, text)


def _any_valid(kind: str, values: tuple[str, ...]) -> st.SearchStrategy[object]:
    """Every value of ``kind`` the catalog accepts, edges included."""
    return {
        "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "bool": st.booleans(),
        "decimal": st.from_regex(r"-?(0|[1-9][0-9]{0,26})(\.[0-9]{1,4})?", fullmatch=True).filter(
            lambda d: len(d) <= 32
        ),
        "date": st.dates().map(date.isoformat),
        "enum": st.sampled_from(values or ("none",)),
        "string": st.text(max_size=12),
    }[kind]


def _text_read_items(shipped: dict[str, Policy]) -> list[tuple[Policy, CatalogItem]]:
    """Every shipped input whose rows are read from their text."""
    return [
        (policy, item)
        for policy in sorted(shipped.values(), key=lambda p: p.id)
        for item in policy.inputs
        if _rows_from_text(item) is not None
    ]


def test_the_histories_are_read_from_text_and_rows_with_free_text_are_not(shipped: dict[str, Policy]) -> None:
    read_from_text = {item.id for _, item in _text_read_items(shipped)}
    assert {"social_insurance.pension_contribution_history", "taxation.monthly_income_history"} <= read_from_text
    for policy in shipped.values():
        for item in policy.inputs:
            if item.type != "records" or any(spec.type == "string" for spec in item.fields):
                assert item.id not in read_from_text


def test_the_gateways_reader_takes_histories_without_decoding_json(
    shipped: dict[str, Policy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate_stored``'s readers use the text path where there is one: with JSON decoding made
    to fail, a canonical history is still read, and an input without a text path is not."""
    policy = shipped["credit.consumer_loan"]
    history = [{"month": "2026-09-01", "gross_income": "9000.00", "tax_withheld": "300.00"}]
    text = canonical_json(history).decode()
    expected = policy._compiled.readers["taxation.monthly_income_history"](history)

    def no_decoding(_: str) -> object:
        raise AssertionError("decoded")

    monkeypatch.setattr(json, "loads", no_decoding)
    assert policy._compiled.stored_readers["taxation.monthly_income_history"](text) == expected
    with pytest.raises(AssertionError, match="decoded"):
        policy._compiled.stored_readers["court_enforcement.enforcement_cases"]("[]x")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_canonical_list_the_catalog_accepts_is_read_from_its_text(
    shipped: dict[str, Policy], data: st.DataObject
) -> None:
    """Rows of numbers, dates, booleans and enums are read straight from their canonical text
    (about half the time of decoding them): every list the catalog accepts, edges included, and
    into the very rows the general reader makes, each value of the same type."""
    policy, item = data.draw(st.sampled_from(_text_read_items(shipped)))
    row = st.fixed_dictionaries({spec.name: _any_valid(spec.type, spec.values) for spec in item.fields})
    rows = data.draw(st.lists(row, max_size=40))
    validate_value(item, rows)
    fast = _rows_from_text(item)
    assert fast is not None
    expected = policy._compiled.readers[item.id](rows)
    text = canonical_json(rows).decode()
    assert _typed(fast(text)) == _typed(expected)
    assert _typed(policy._compiled.stored_readers[item.id](text)) == _typed(expected)


def _typed(rows: object) -> list[list[tuple[str, type, object]]]:
    """Rows compared with each value's type: ``1 == 1.0`` in Python, not in CEL."""
    assert isinstance(rows, list)
    return [sorted((name, type(value), value) for name, value in row.items()) for row in rows]


def test_a_policy_decides_alike_from_stored_text_and_from_values(catalog: Catalog, shipped: dict[str, Policy]) -> None:
    """The gateway's way (each value's stored text) against the general one, over a seeded population."""
    decided: Counter[str] = Counter()
    for citizen in generate_population(catalog, citizens=60, seed=3):
        values = {str(r.item_id): (r.as_of, r.value) for r in citizen.records}
        stored = {item_id: (day, canonical_json(value).decode()) for item_id, (day, value) in values.items()}
        for policy_id, policy in shipped.items():
            params = _seed_params(policy_id)
            outcome = evaluate(policy, records=values, params=params, as_of=DEFAULT_AS_OF)
            assert evaluate_stored(policy, records=stored, params=params, as_of=DEFAULT_AS_OF) == outcome
            decided[outcome.decision] += 1
    assert len(decided) == 3  # the comparison covered every kind of decision


EDGE_CATALOG = """\
version: 1
departments:
  - {id: dept, name_en: Department, name_zh: 部门}
items:
  - id: dept.rows
    department: dept
    type: records
    fields:
      - {name: count, type: int}
      - {name: amount, type: decimal, unit: CNY}
      - {name: day, type: date}
      - {name: flag, type: bool}
      - {name: kind, type: enum, values: [a, b]}
    sensitivity: 2
    name_en: Rows of every type read from text
    name_zh: 行
"""
EDGE_POLICY = """\
id: credit.edge
version: 1
description: every field type read from stored text
purpose: credit.consumer_loan
institution_kinds: [bank]
inputs: [dept.rows]
rules:
  - {id: a, description: a, reason: NONE, effect: refer, rank: 1, passes: "dept.rows.all(r, r.count >= 0)"}
"""
EDGE_ROW = {"count": 1, "amount": "1.5", "day": "2024-02-29", "flag": True, "kind": "a"}


@pytest.fixture(scope="module")
def edge_policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    edge_catalog = parse_catalog(EDGE_CATALOG, source="edge catalog")
    directory = tmp_path_factory.mktemp("edge") / "credit" / "edge" / "v1"
    directory.mkdir(parents=True)
    (directory / "policy.yaml").write_text(EDGE_POLICY, encoding="utf-8")
    return load_policy(directory, edge_catalog)


@pytest.mark.parametrize(
    ("change", "accepted"),
    [
        ({}, True),
        ({"count": 2**63 - 1}, True),
        ({"count": -(2**63)}, True),
        ({"count": 2**63}, False),
        ({"count": -(2**63) - 1}, False),
        ({"amount": "-" + "1" * 26 + ".1234"}, True),  # 32 characters
        ({"amount": "1" * 28 + ".1234"}, False),  # 33
        ({"amount": "01.5"}, False),
        ({"amount": "1.12345"}, False),
        ({"day": "2023-02-29"}, False),  # not a leap year
        ({"day": "0000-01-01"}, False),
        ({"kind": "c"}, False),
        ({"flag": 1}, False),
    ],
)
def test_stored_rows_at_the_catalogs_edges(edge_policy: Policy, change: dict[str, object], accepted: bool) -> None:
    """Every field type read from stored text, at and past each edge the catalog draws; the text is
    taken whole by the fast way when it is valid, and both ways agree either way."""
    read = edge_policy._compiled.readers["dept.rows"]
    stored = edge_policy._compiled.stored_readers["dept.rows"]
    fast = _rows_from_text(edge_policy.inputs[0])
    assert fast is not None
    rows = [EDGE_ROW, {**EDGE_ROW, **change}]
    text = canonical_json(rows).decode()
    assert _read(stored, text) == _read(read, rows)
    assert (_read(read, rows)[0] == "ok") is accepted
    if accepted:
        assert _typed(fast(text)) == _typed(read(rows))
    else:
        assert fast(text) is None


@pytest.mark.parametrize(
    ("edit", "accepted"),
    [
        (('"count":1', '"count":01'), False),  # not JSON
        (('"count":1', '"count":-0'), True),
        (('"count":1', '"count":1.0'), False),
        (('"count":1', '"count":1e0'), False),
        (('"amount":"1.5"', '"amount":1.5'), False),
        (('"flag":true', '"flag":"true"'), False),
        (('"amount":"1.5"', '"amount": "1.5"'), True),  # not canonical: the general way
        (('{"amount":"1.5",', '{"count":7,"amount":"1.5",'), True),  # a key twice: JSON keeps the last
        (("},{", "} ,{"), True),
        (("},{", "},,{"), False),
        (("]", "],"), False),
    ],
)
def test_stored_text_that_is_not_canonical_is_read_as_decoding_it_does(
    edge_policy: Policy, edit: tuple[str, str], accepted: bool
) -> None:
    read = edge_policy._compiled.readers["dept.rows"]
    stored = edge_policy._compiled.stored_readers["dept.rows"]
    text = canonical_json([EDGE_ROW, EDGE_ROW]).decode().replace(*edit, 1)
    assert text != canonical_json([EDGE_ROW, EDGE_ROW]).decode()
    expected = _read(lambda t: read(json.loads(t)), text)
    assert _read(stored, text) == expected
    assert (expected[0] == "ok") is accepted


def test_stored_rows_up_to_the_catalogs_row_limit(edge_policy: Policy) -> None:
    stored = edge_policy._compiled.stored_readers["dept.rows"]
    fast = _rows_from_text(edge_policy.inputs[0])
    assert fast is not None
    most = canonical_json([EDGE_ROW] * MAX_RECORD_ROWS).decode()
    too_many = canonical_json([EDGE_ROW] * (MAX_RECORD_ROWS + 1)).decode()
    assert fast(most) is not None
    assert len(stored(most)) == MAX_RECORD_ROWS  # type: ignore[arg-type]
    assert fast(too_many) is None
    with pytest.raises(CatalogValueError):
        stored(too_many)


# --- one program for the whole policy decides as one program per expression ------------------------

AS_OF = date(2026, 11, 26)


def _valid(kind: str, values: tuple[str, ...]) -> st.SearchStrategy[object]:
    """Values the catalog accepts, drawn around the shipped policies' thresholds (Hypothesis alone
    favours small numbers, which would leave every band at its default)."""
    amounts = st.sampled_from([0, 1, 2, 3, 5, 12, 36, 3_000, 5_000, 8_000, 10_000, 15_000, 25_000, 50_000, 1_000_000])
    return {
        "int": amounts,
        "bool": st.booleans(),
        "decimal": st.tuples(amounts, st.integers(0, 99)).map(lambda a: f"{a[0]}.{a[1]:02d}"),
        # Mostly within the policies' windows before as_of (2026-11-26).
        "date": st.integers(min_value=-5, max_value=1200).map(lambda d: (AS_OF - timedelta(days=d)).isoformat()),
        "enum": st.sampled_from(values or ("none",)),
        "string": st.text(alphabet="ABH0123456789", min_size=1, max_size=12),
    }[kind]


def _valid_input(item: CatalogItem) -> st.SearchStrategy[object]:
    if item.type != "records":
        return _valid(item.type, item.values)
    row = st.fixed_dictionaries({spec.name: _valid(spec.type, spec.values) for spec in item.fields})
    return st.sampled_from([0, 1, 3, 11, 12, 20, 30]).flatmap(lambda n: st.lists(row, min_size=n, max_size=n))


def _parameter(parameter: Parameter) -> st.SearchStrategy[str]:
    if parameter.type == "enum":
        return st.sampled_from(parameter.values)
    if parameter.type == "date":
        return st.dates(min_value=date(2024, 1, 1), max_value=date(2026, 12, 31)).map(date.isoformat)
    assert parameter.pattern is not None
    assert parameter.max_length is not None
    return st.from_regex(parameter.pattern, fullmatch=True).filter(
        lambda text: len(text) <= (parameter.max_length or 0)
    )


def _one_by_one(policy: Policy, variables: dict[str, object]) -> tuple[list[bool] | None, dict[str, str] | None]:
    """The reference: every expression compiled and evaluated alone, bands first-true in order, in
    the environment the policy was checked in, each row the message of its declared fields (the
    policy itself runs with rows as maps)."""
    env = policy._compiled.checked_env
    as_messages = dict(variables)
    for item_id, row_class in policy._compiled.row_classes.items():
        as_messages[item_id] = [row_class(**row) for row in variables[item_id]]  # type: ignore[attr-defined]
    activation = env.Activation(as_messages)

    def run(expression: str) -> bool | None:
        result = env.compile(expression).eval(activation)
        return result.value() if result.type() == cel.Type.BOOL else None

    passed = [run(rule.passes) for rule in policy.rules]
    bands: dict[str, str] = {}
    for name, entries in policy.bands.items():
        for band in entries:
            holds = run(band.when)
            if holds is None:
                return None, None
            if holds:
                bands[name] = band.label
                break
    return (None, None) if None in passed else ([bool(p) for p in passed], bands)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_one_program_decides_as_one_program_per_expression(shipped: dict[str, Policy], data: st.DataObject) -> None:
    """A policy's rules and bands run as one CEL program (one evaluation instead of eleven); the
    outcome must be the one that running each expression alone gives, error or not."""
    policy = data.draw(st.sampled_from(sorted(shipped.values(), key=lambda p: p.id)))
    as_of = AS_OF
    records = {item.id: (date(2026, 10, 1), data.draw(_valid_input(item))) for item in policy.inputs}
    params = {name: data.draw(_parameter(parameter)) for name, parameter in policy.parameters.items()}
    outcome = evaluate(policy, records=records, params=params, as_of=as_of)

    variables: dict[str, object] = {**_parameter_values(policy, params), "as_of": date_to_days(as_of)}
    for item in policy.inputs:
        variables[item.id] = policy._compiled.readers[item.id](records[item.id][1])
    passed, bands = _one_by_one(policy, variables)
    if passed is None:
        assert outcome.reasons == (EVALUATION_ERROR,)
        return
    failing = sorted((r for r, ok in zip(policy.rules, passed, strict=True) if not ok), key=lambda r: r.rank)
    expected = "NOT_ELIGIBLE" if any(r.effect == "decline" for r in failing) else "REFER" if failing else "ELIGIBLE"
    assert outcome.decision == expected
    assert dict(outcome.bands) == bands
    assert list(outcome.reasons) == list(dict.fromkeys(r.reason for r in failing))[:4]


def test_policy_sources_are_what_the_layout_pattern_finds() -> None:
    packaged = default_policies_dir()
    assert policy_sources(packaged) == sorted(packaged.glob("*/*/v*/policy.yaml"))
    assert len(policy_sources(packaged)) >= 5


def test_an_unreadable_policies_directory_is_an_error_not_a_policy_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog: Catalog
) -> None:
    """``Path.glob`` skips a directory it cannot read, so `policy sign` would have signed, and `serve`
    loaded, a manifest without the policies inside it. (The refusal is the operating system's; it is
    made here for a root user, whom permissions do not stop.)"""
    policies = tmp_path / "policies"
    shutil.copytree(default_policies_dir(), policies)
    unreadable = policies / "credit"
    listing = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    expected = f"cannot read the policies directory {unreadable}: Permission denied"
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        load_policies(policies, catalog)
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        policy_files(policies)
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        run_policy_tests(policies, catalog)

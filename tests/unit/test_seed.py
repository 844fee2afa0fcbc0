"""The synthetic population: deterministic, prefix-stable, complete, valid and plausible."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from veilgate_server.core.catalog import Catalog, load_catalog, parse_catalog, validate_value
from veilgate_server.seed import DEFAULT_AS_OF, SeedCitizen, citizen_ids, generate_population

SHIPPED = Path(__file__).resolve().parents[2] / "policies" / "catalog.yaml"
POPULATION = 200
SEED = 20261031
JINAN_AREAS = {
    "370102", "370103", "370104", "370105", "370112", "370113", "370114", "370115", "370116", "370117",
    "370124", "370126",
}  # fmt: skip


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(SHIPPED)


@pytest.fixture(scope="module")
def population(catalog: Catalog) -> list[SeedCitizen]:
    return list(generate_population(catalog, citizens=POPULATION, seed=SEED))


def _dump(citizens: list[SeedCitizen]) -> bytes:
    return json.dumps([asdict(c) for c in citizens], default=str, ensure_ascii=False).encode()


def _values(citizen: SeedCitizen) -> dict[str, object]:
    return {record.item_id: record.value for record in citizen.records}


def _rows(citizen: SeedCitizen, item_id: str) -> list[dict[str, object]]:
    value = _values(citizen)[item_id]
    assert isinstance(value, list)
    return value


def _cents(text: object) -> int:
    assert isinstance(text, str)
    return int(Decimal(text) * 100)


# --- identity numbers (checked with an independent MOD 11-2 implementation) -------------------------


def _mod11_2_valid(citizen_id: str) -> bool:
    total = sum(int(digit) * (2 ** (17 - i) % 11) for i, digit in enumerate(citizen_id[:17]))
    expected = (12 - total % 11) % 11
    return citizen_id[17] == ("X" if expected == 10 else str(expected))


def test_ids_are_valid_unique_jinan_resident_numbers(population: list[SeedCitizen]) -> None:
    ids = [citizen.citizen_id for citizen in population]
    assert len(set(ids)) == len(ids)
    for citizen_id in ids:
        assert re.fullmatch(r"[0-9]{17}[0-9X]", citizen_id), citizen_id
        assert _mod11_2_valid(citizen_id), citizen_id
        assert citizen_id[:6] in JINAN_AREAS
        birth = date(int(citizen_id[6:10]), int(citizen_id[10:12]), int(citizen_id[12:14]))
        age = DEFAULT_AS_OF.year - birth.year - ((DEFAULT_AS_OF.month, DEFAULT_AS_OF.day) < (birth.month, birth.day))
        assert 20 <= age <= 70, citizen_id
        assert citizen_id[14:17] != "000"


def test_ids_stay_unique_over_a_large_population() -> None:
    ids = citizen_ids(20_000, seed=1)
    assert len(set(ids)) == len(ids)
    assert all(_mod11_2_valid(citizen_id) for citizen_id in ids)


def test_citizen_ids_match_the_population(population: list[SeedCitizen]) -> None:
    assert citizen_ids(POPULATION, seed=SEED) == [citizen.citizen_id for citizen in population]


# --- determinism -----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_data(catalog: Catalog, population: list[SeedCitizen]) -> None:
    again = list(generate_population(catalog, citizens=POPULATION, seed=SEED))
    assert _dump(again) == _dump(population)


def test_different_seed_gives_different_data(catalog: Catalog, population: list[SeedCitizen]) -> None:
    other = list(generate_population(catalog, citizens=POPULATION, seed=SEED + 1))
    assert _dump(other) != _dump(population)
    assert not {c.citizen_id for c in other} & {c.citizen_id for c in population}


def test_a_citizen_does_not_depend_on_the_population_size(catalog: Catalog) -> None:
    small = list(generate_population(catalog, citizens=5, seed=SEED))
    large = list(generate_population(catalog, citizens=50, seed=SEED))
    assert _dump(small) == _dump(large[:5])


def test_generation_streams(catalog: Catalog) -> None:
    stream = generate_population(catalog, citizens=10**9, seed=SEED)
    assert isinstance(stream, Iterator)
    assert next(stream).records


def test_as_of_moves_every_date(catalog: Catalog) -> None:
    as_of = date(2025, 3, 1)
    citizens = list(generate_population(catalog, citizens=60, seed=SEED, as_of=as_of))
    assert [c.citizen_id for c in citizens] == citizen_ids(60, seed=SEED, as_of=as_of)
    for citizen in citizens:
        for record in citizen.records:
            assert as_of - timedelta(days=90) <= record.as_of <= as_of
            # Everything is dated on or before the department's data date, except the end of a
            # mortgage term, which lies in the future.
            rows = record.value if isinstance(record.value, list) else [{"value": record.value}]
            for row in rows:
                for name, value in row.items():
                    if name != "term_end_date" and isinstance(value, str) and _DATE.fullmatch(value):
                        assert value <= record.as_of.isoformat(), (record.item_id, name)


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


# --- completeness and validity ---------------------------------------------------------------------


def test_every_item_is_covered_for_every_citizen(catalog: Catalog, population: list[SeedCitizen]) -> None:
    for citizen in population:
        assert [record.item_id for record in citizen.records] == list(catalog.items)
        for record in citizen.records:
            assert record.citizen_id == citizen.citizen_id
            assert record.department == catalog.item(record.item_id).department
            assert DEFAULT_AS_OF - timedelta(days=90) <= record.as_of <= DEFAULT_AS_OF


def test_one_data_date_per_department_and_citizen(population: list[SeedCitizen]) -> None:
    for citizen in population:
        dates: dict[str, set[date]] = {}
        for record in citizen.records:
            dates.setdefault(record.department, set()).add(record.as_of)
        assert all(len(found) == 1 for found in dates.values())


def test_every_value_validates(catalog: Catalog, population: list[SeedCitizen]) -> None:
    for citizen in population:
        for record in citizen.records:
            validate_value(catalog.item(record.item_id), record.value)


def test_items_unknown_to_the_generator_get_valid_generic_values() -> None:
    text = SHIPPED.read_text(encoding="utf-8") + (
        "  - id: public_utilities.heating_subscriber\n"
        "    department: public_utilities\n"
        "    type: records\n"
        "    fields:\n"
        "      - {name: since, type: date}\n"
        "      - {name: area, type: decimal, unit: m2}\n"
        "      - {name: plan, type: enum, values: [full, partial]}\n"
        "      - {name: contract, type: string}\n"
        "      - {name: rooms, type: int}\n"
        "      - {name: active, type: bool}\n"
        "    sensitivity: 2\n"
        "    name_en: District heating subscriptions\n"
        "    name_zh: 集中供热\n"
    )
    extended = parse_catalog(text, source="extended.yaml")
    shipped = load_catalog(SHIPPED)
    with_extra = list(generate_population(extended, citizens=30, seed=SEED))
    without = list(generate_population(shipped, citizens=30, seed=SEED))
    for citizen, plain in zip(with_extra, without, strict=True):
        for record in citizen.records:
            validate_value(extended.item(record.item_id), record.value)
        # Adding an item leaves every other value alone.
        assert [r for r in citizen.records if r.item_id != "public_utilities.heating_subscriber"] == list(plain.records)


# --- plausibility ----------------------------------------------------------------------------------


def test_population_has_gaps_arrears_enforcement_stays_and_businesses(population: list[SeedCitizen]) -> None:
    def count(predicate: object) -> int:
        assert callable(predicate)
        return sum(1 for citizen in population if predicate(_values(citizen)))

    with_gaps = count(lambda v: any(not row["paid"] for row in v["social_insurance.pension_contribution_history"]))
    arrears = count(lambda v: v["taxation.tax_arrears"])
    enforcement = count(lambda v: v["court_enforcement.enforcement_cases"])
    dishonest = count(lambda v: v["court_enforcement.on_dishonest_list"])
    stays = count(lambda v: v["medical_insurance.inpatient_stays"])
    businesses = count(lambda v: v["market_regulation.business_registrations"])
    assert 0.05 * POPULATION <= with_gaps <= 0.6 * POPULATION
    assert 1 <= arrears <= 0.15 * POPULATION
    assert 1 <= enforcement <= 0.1 * POPULATION
    assert dishonest <= enforcement
    assert 0.05 * POPULATION <= stays <= 0.5 * POPULATION
    assert 0.05 * POPULATION <= businesses <= 0.3 * POPULATION


def test_histories_have_monthly_rows(population: list[SeedCitizen]) -> None:
    for citizen in population:
        values = _values(citizen)
        pension = _rows(citizen, "social_insurance.pension_contribution_history")
        if values["social_insurance.insured_status"] == "retired":
            assert pension == []
            continue
        assert 24 <= len(pension) <= 36
        months = [str(row["month"]) for row in pension]
        assert months == sorted(months)
        assert all(month.endswith("-01") for month in months)
        assert len(set(months)) == len(months)
        income_months = [row["month"] for row in _rows(citizen, "taxation.monthly_income_history")]
        assert set(income_months) <= set(months)


def test_summaries_agree_with_their_lists(population: list[SeedCitizen]) -> None:
    for citizen in population:
        v = _values(citizen)
        properties = _rows(citizen, "real_estate.property_list")
        assert v["real_estate.property_count"] == len(properties) <= 3
        assert _cents(v["real_estate.total_floor_area"]) == sum(_cents(p["floor_area"]) for p in properties)
        mortgaged = {p["certificate_number"] for p in properties if p["mortgaged"]}
        mortgages = _rows(citizen, "real_estate.mortgage_registrations")
        assert {m["property_certificate_number"] for m in mortgages} == mortgaged
        assert v["traffic_police.vehicle_count"] == len(_rows(citizen, "traffic_police.vehicle_list")) <= 2
        assert v["taxation.arrears_outstanding"] == bool(v["taxation.tax_arrears"])
        entries = _rows(citizen, "court_enforcement.dishonest_debtor_entries")
        assert v["court_enforcement.on_dishonest_list"] == bool(entries)
        if entries:
            assert v["court_enforcement.consumption_restricted"] is True
        cases = {c["case_number"] for c in _rows(citizen, "court_enforcement.enforcement_cases")}
        assert {e["case_number"] for e in entries} <= cases
        businesses = _rows(citizen, "market_regulation.business_registrations")
        if businesses:
            assert v["market_regulation.business_status"] in {b["status"] for b in businesses}
        else:
            assert v["market_regulation.business_status"] == "none"
            assert v["market_regulation.registered_capital_total"] == "0.00"
        assert v["market_regulation.abnormal_operation_listed"] == any(
            b["status"] == "abnormal_operation" for b in businesses
        )
        registrations = _rows(citizen, "civil_affairs.marriage_registrations")
        assert (v["civil_affairs.marital_status"] == "unmarried") == (registrations == [])
        if v["housing_fund.account_status"] == "not_opened":
            assert v["housing_fund.balance"] == "0.00"
            assert _rows(citizen, "housing_fund.deposit_history") == []


def test_inpatient_stays_are_consistent(population: list[SeedCitizen]) -> None:
    seen = 0
    for citizen in population:
        stays = _rows(citizen, "medical_insurance.inpatient_stays")
        assert len(stays) <= 3
        for stay in stays:
            seen += 1
            assert str(stay["admission_date"]) <= str(stay["discharge_date"])
            total = _cents(stay["total_amount"])
            assert total > 0
            assert _cents(stay["fund_paid_amount"]) + _cents(stay["self_paid_amount"]) == total
            assert _cents(stay["fund_paid_amount"]) >= 0
            assert _cents(stay["self_paid_amount"]) >= 0
    assert seen


def test_contribution_gaps_match_the_insured_status(population: list[SeedCitizen]) -> None:
    for citizen in population:
        v = _values(citizen)
        history = _rows(citizen, "social_insurance.pension_contribution_history")
        status = v["social_insurance.insured_status"]
        if history:
            assert status == ("contributing" if history[-1]["paid"] else "suspended")
            assert v["social_insurance.cumulative_contribution_months"] >= sum(  # type: ignore[operator]
                1 for row in history if row["paid"]
            )

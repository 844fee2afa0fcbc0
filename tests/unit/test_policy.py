"""The policy engine: load-time type checks, decisions, reasons, guards and a privacy property."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from veilgate_server.core.catalog import Catalog, load_catalog
from veilgate_server.core.policy import (
    PolicyInvalid,
    PolicyParameterInvalid,
    evaluate,
    load_policies,
    load_policy,
)
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

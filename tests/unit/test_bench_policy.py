"""`veilgate bench --policy ID --param NAME=VALUE`: which policy evaluate asks, checked against the
packaged policy before the run, as the gateway will check every call of it."""

from __future__ import annotations

import pytest

from veilgate.errors import ConfigurationError
from veilgate_server.bench.report import render_table
from veilgate_server.bench.results import ScenarioResult
from veilgate_server.bench.rpc_scenarios import LOAN_PARAMETERS, BenchPolicy, _evaluate_label, bench_policy

CLAIM = (
    "claimed_admission_date=2026-05-10",
    "claimed_discharge_date=2026-05-18",
    "hospital_code=H37010200015",
)


def test_the_default_is_the_consumer_loan_a_bank_asks_as_in_every_run_on_record() -> None:
    default = bench_policy(None, ())
    assert default == BenchPolicy()
    assert (default.policy_id, default.purpose) == ("credit.consumer_loan", "credit.consumer_loan")
    assert dict(default.parameters) == LOAN_PARAMETERS == {"requested_amount_band": "50k_to_200k"}
    assert (default.institution_kind, default.institution_id) == ("bank", "bench-bank")
    changed = bench_policy(None, ("requested_amount_band=up_to_50k",))
    assert dict(changed.parameters) == {"requested_amount_band": "up_to_50k"}


def test_another_policy_is_asked_by_the_kind_of_institution_it_serves_with_the_parameters_given() -> None:
    claim = bench_policy("insurance.inpatient_claim", CLAIM)
    assert claim.policy_id == "insurance.inpatient_claim"
    assert claim.purpose == "insurance.claim"
    assert (claim.institution_kind, claim.institution_id) == ("insurer", "bench-insurer")
    assert dict(claim.parameters) == {
        "claimed_admission_date": "2026-05-10",
        "claimed_discharge_date": "2026-05-18",
        "hospital_code": "H37010200015",
    }
    underwriting = bench_policy("insurance.health_underwriting", ())  # declares no parameter
    assert (underwriting.purpose, underwriting.institution_kind) == ("insurance.underwriting", "insurer")
    assert dict(underwriting.parameters) == {}
    assert _evaluate_label(claim) == "evaluate (insurance.inpatient_claim)"
    assert _evaluate_label(BenchPolicy()) == "evaluate"  # the default plot's series keeps its name


@pytest.mark.parametrize(
    ("policy", "params", "message"),
    [
        pytest.param(
            "credit.payday",
            (),
            "--policy 'credit.payday': no such policy; choose from credit.consumer_loan, credit.mortgage_prequal, "
            "credit.sme_loan, insurance.health_underwriting, insurance.inpatient_claim",
            id="unknown-policy",
        ),
        pytest.param(
            "",
            (),
            "--policy '': no such policy; choose from credit.consumer_loan, credit.mortgage_prequal, "
            "credit.sme_loan, insurance.health_underwriting, insurance.inpatient_claim",
            id="empty-policy",
        ),
        pytest.param(
            "insurance.inpatient_claim",
            CLAIM[2:],
            "--policy insurance.inpatient_claim needs --param NAME=VALUE for: claimed_admission_date "
            "(a date YYYY-MM-DD); claimed_discharge_date (a date YYYY-MM-DD)",
            id="missing-parameters",
        ),
        pytest.param(
            "credit.mortgage_prequal",
            (),
            "--policy credit.mortgage_prequal needs --param NAME=VALUE for: home_type (one of first_home, second_home)",
            id="missing-enum",
        ),
        pytest.param(
            "insurance.inpatient_claim",
            (*CLAIM[:2], "hospital_code=37010200015"),
            "--param: parameter 'hospital_code' is not of the declared form",
            id="string-of-another-form",
        ),
        pytest.param(
            "insurance.inpatient_claim",
            ("claimed_admission_date=2026-02-30", *CLAIM[1:]),
            "--param: parameter 'claimed_admission_date' is not a calendar date",
            id="no-such-date",
        ),
        pytest.param(
            "credit.mortgage_prequal",
            ("home_type=castle",),
            "--param: parameter 'home_type' must be one of first_home, second_home",
            id="enum-value",
        ),
        pytest.param(
            None, ("colour=red",), "--param: policy 'credit.consumer_loan' has no parameter 'colour'", id="unknown-name"
        ),
        pytest.param(
            None, ("requested_amount_band",), "--param 'requested_amount_band': give NAME=VALUE", id="no-equals"
        ),
        pytest.param(None, ("=up_to_50k",), "--param '=up_to_50k': give NAME=VALUE", id="no-name"),
        pytest.param(
            None,
            ("requested_amount_band=up_to_50k", "requested_amount_band=up_to_50k"),
            "--param requested_amount_band: given twice",
            id="twice",
        ),
    ],
)
def test_a_policy_or_parameter_the_gateway_would_refuse_is_refused_by_name(
    policy: str | None, params: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        bench_policy(policy, params)
    assert refused.value.message == message


def test_the_table_says_what_evaluate_asked() -> None:
    machine = {"cpu": "test cpu", "cores": 2, "python": "3", "grpcio": "1", "sqlite": "3", "postgres": None}
    claim = ScenarioResult(
        name="evaluate",
        qps=900.0,
        baseline_qps=5000.0,
        ratio=0.18,
        details={
            "policy": "insurance.inpatient_claim",
            "institution_kind": "insurer",
            "parameters": {"a": "1", "b": "2"},
        },
    )
    table = render_table(machine, {}, [claim])
    assert "\nevaluate: policy insurance.inpatient_claim (insurer), parameters a=1, b=2\n" in table
    underwriting = ScenarioResult(
        name="evaluate",
        details={"policy": "insurance.health_underwriting", "institution_kind": "insurer", "parameters": {}},
    )
    assert "evaluate: policy insurance.health_underwriting (insurer), no parameters" in render_table(
        machine, {}, [underwriting]
    )
    assert "evaluate:" not in render_table(machine, {}, [ScenarioResult(name="log_append", rate=1.0)])
    operators = ScenarioResult(name="get_my_data", details={"policies": "ops/policies"})
    assert "\ncatalog and policies: a signed copy of ops/policies\n" in render_table(machine, {}, [operators, claim])
    packaged = ScenarioResult(name="get_my_data", details={"policies": "packaged"})
    assert "catalog and policies" not in render_table(machine, {}, [packaged, claim])

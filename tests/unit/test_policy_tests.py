"""`veilgate policy test`: every shipped policy's tests.yaml passes and failures are readable."""

from __future__ import annotations

import shutil
from pathlib import Path

from veilgate_server.core.catalog import load_catalog
from veilgate_server.policy_tests import run_policy_tests

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_shipped_policy_tests_pass() -> None:
    report = run_policy_tests(POLICIES, load_catalog(POLICIES / "catalog.yaml"))
    assert report.ok, report.format_report()
    assert report.policies == 5
    assert report.passed >= 40


def test_a_wrong_expectation_and_an_untested_reason_are_reported(tmp_path: Path) -> None:
    source = POLICIES / "insurance" / "health_underwriting" / "v1"
    target = tmp_path / "insurance" / "health_underwriting" / "v1"
    shutil.copytree(source, target)
    tests = target / "tests.yaml"
    text = tests.read_text(encoding="utf-8").replace(
        "reasons: [NOT_ENROLLED_MEDICAL_INSURANCE]", "reasons: [SOMETHING_ELSE]"
    )
    tests.write_text(text, encoding="utf-8")
    report = run_policy_tests(tmp_path, load_catalog(POLICIES / "catalog.yaml"))
    assert not report.ok
    assert any("case 'not enrolled'" in line and "tests.yaml:" in line for line in report.failed)
    assert any("no case expects reason NOT_ENROLLED_MEDICAL_INSURANCE" in line for line in report.failed)
    assert "FAIL" in report.format_report()

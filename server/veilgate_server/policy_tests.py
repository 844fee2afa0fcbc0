"""Run every policy's ``tests.yaml`` (``veilgate policy test``; CI runs it).

``tests.yaml`` format, next to its ``policy.yaml``::

    defaults:                      # optional; merged under every case
      as_of: 2026-10-31
      data_as_of: 2026-10-25       # the data date given to every record (default: as_of)
      params: {requested_amount_band: up_to_50k}
      records:                     # item id -> JSON wire value, or a monthly shorthand:
        social_insurance.pension_contribution_history:
          monthly: {through: 2026-09-01, months: 24, row: {paid: true, ...}, override: {2026-03-01: {paid: false}},
                    skip: [2026-04-01]}
    cases:
      - name: steady earner
        records: {taxation.arrears_outstanding: true}   # replaces these items of the defaults
        missing: [court_enforcement.enforcement_cases]  # removes items
        expect: {decision: REFER, bands: {credit_limit: up_to_50k}, reasons: [TAX_ARREARS_OUTSTANDING]}

Besides each case's result, the runner requires every reason code of every policy to be expected by
at least one case, so a rule cannot ship untested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from veilgate._internal.jose import canonical_json
from veilgate.errors import VeilgateError
from veilgate_server.core.catalog import Catalog, _Map, _Seq
from veilgate_server.core.policy import Policy, evaluate_stored, load_policy, load_strict_yaml, policy_sources

__all__ = ["PolicyTestReport", "run_policy_tests"]


@dataclass
class PolicyTestReport:
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    policies: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.policies > 0

    def format_report(self) -> str:
        lines = [f"FAIL {line}" for line in self.failed]
        lines.append(f"{self.policies} policies, {self.passed} cases passed, {len(self.failed)} failed")
        return "\n".join(lines)


class _CaseError(Exception):
    """A malformed test case; the message names what is wrong."""


def run_policy_tests(policies_dir: Path, catalog: Catalog) -> PolicyTestReport:
    """Load every policy version under ``policies_dir`` and run its ``tests.yaml`` cases."""
    report = PolicyTestReport()
    for path in policy_sources(policies_dir):
        directory = path.parent
        report.policies += 1
        try:
            policy = load_policy(directory, catalog)
        except VeilgateError as e:
            report.failed.append(f"{path}: does not load: {e.message}")
            continue
        _run_file(policy, directory / "tests.yaml", report)
    if report.policies == 0:
        report.failed.append(f"{policies_dir}: no policies found")
    return report


def _run_file(policy: Policy, tests_path: Path, report: PolicyTestReport) -> None:
    try:
        doc = load_strict_yaml(tests_path.read_bytes(), str(tests_path))
    except OSError:
        report.failed.append(f"{tests_path}: missing or unreadable")
        return
    except VeilgateError as e:
        report.failed.append(e.message)
        return
    if not isinstance(doc, _Map) or not isinstance(doc.get("cases"), _Seq) or set(doc) - {"defaults", "cases"}:
        report.failed.append(f"{tests_path}: must be a mapping with 'cases' (a list) and optional 'defaults'")
        return
    defaults = doc.get("defaults", {})
    cases = doc["cases"]
    assert isinstance(cases, _Seq)
    expected_reasons: set[str] = set()
    for index, case in enumerate(cases):
        line = cases.item_lines[index]
        name = case.get("name", f"#{index}") if isinstance(case, dict) else f"#{index}"
        where = f"{tests_path}:{line}: case {name!r}"
        try:
            problem = _run_case(policy, defaults, case, expected_reasons)
        except _CaseError as e:
            problem = f"malformed: {e}"
        except VeilgateError as e:
            problem = f"raised {type(e).__name__}: {e.message}"
        if problem is None:
            report.passed += 1
        else:
            report.failed.append(f"{where}: {problem}")
    for code in policy.reason_codes:
        if code not in expected_reasons:
            report.failed.append(f"{tests_path}: no case expects reason {code} of {policy.id}")


def _run_case(policy: Policy, defaults: object, case: object, expected_reasons: set[str]) -> str | None:
    if not isinstance(defaults, dict) or not isinstance(case, dict):
        raise _CaseError("defaults and cases must be mappings")
    unknown = set(case) - {"name", "as_of", "data_as_of", "params", "records", "missing", "expect"}
    if unknown:
        raise _CaseError(f"unknown key {sorted(map(str, unknown))[0]!r}")
    as_of = _day(case.get("as_of", defaults.get("as_of")), "as_of")
    data_as_of = _day(case.get("data_as_of", defaults.get("data_as_of", as_of)), "data_as_of")
    params = {**_mapping(defaults.get("params", {}), "params"), **_mapping(case.get("params", {}), "params")}
    values = {**_mapping(defaults.get("records", {}), "records"), **_mapping(case.get("records", {}), "records")}
    for item_id in _list(case.get("missing", []), "missing"):
        values.pop(str(item_id), None)
    records = {str(k): (data_as_of, _stored(str(k), v)) for k, v in values.items()}
    expect = _mapping(case.get("expect"), "expect")
    if set(expect) - {"decision", "bands", "reasons"} or "decision" not in expect:
        raise _CaseError("'expect' needs 'decision' and may have 'bands' and 'reasons'")
    reasons = tuple(str(r) for r in _list(expect.get("reasons", []), "reasons"))
    expected_reasons.update(reasons)

    # As the gateway evaluates: from each value's canonical JSON text, as the record store keeps it.
    outcome = evaluate_stored(
        policy, records=records, params={k: str(_wire(v)) for k, v in params.items()}, as_of=as_of
    )
    problems: list[str] = []
    if outcome.decision != expect["decision"]:
        problems.append(f"decision {outcome.decision}, expected {expect['decision']}")
    if outcome.reasons != reasons:
        problems.append(f"reasons {list(outcome.reasons)}, expected {list(reasons)}")
    if "bands" in expect and dict(outcome.bands) != _mapping(expect["bands"], "bands"):
        problems.append(f"bands {dict(outcome.bands)}, expected {_mapping(expect['bands'], 'bands')}")
    return "; ".join(problems) or None


def _mapping(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, Mapping):
        raise _CaseError(f"{what!r} must be a mapping")
    return {str(k): v for k, v in value.items()}


def _day(value: object, what: str) -> date:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _CaseError(f"{what!r} must be a date YYYY-MM-DD")


def _stored(item_id: str, value: object) -> str:
    """A record's value as the record store keeps it: canonical JSON text."""
    try:
        return canonical_json(_wire(value)).decode()
    except (TypeError, ValueError):
        raise _CaseError(f"record {item_id!r} is not a JSON value") from None


def _wire(value: object) -> object:
    """YAML value -> JSON wire value: dates become strings; ``{monthly: ...}`` expands to rows."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        if set(value) == {"monthly"}:
            return _monthly(_mapping(value["monthly"], "monthly"))
        return {str(k): _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _monthly(spec: dict[str, object]) -> list[object]:
    if set(spec) - {"through", "months", "row", "override", "skip"}:
        raise _CaseError("'monthly' takes through, months, row, override and skip")
    through = _day(spec.get("through"), "monthly.through")
    months = spec.get("months")
    if type(months) is not int or not 0 <= months <= 120:
        raise _CaseError("'monthly.months' must be an integer 0 to 120")
    row = _mapping(spec.get("row", {}), "monthly.row")
    overrides = {_day(k, "override month"): _mapping(v, "override") for k, v in _mapping_any(spec.get("override", {}))}
    skip = {_day(d, "skip month") for d in _list(spec.get("skip", []), "monthly.skip")}
    rows: list[object] = []
    year, month = through.year, through.month
    for _ in range(months):
        first = date(year, month, 1)
        if first not in skip:
            rows.append(_wire({"month": first, **row, **overrides.get(first, {})}))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return rows


def _mapping_any(value: object) -> list[tuple[object, object]]:
    if not isinstance(value, Mapping):
        raise _CaseError("'monthly.override' must be a mapping of month -> fields")
    return list(value.items())


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise _CaseError(f"{what!r} must be a list")
    return list(value)

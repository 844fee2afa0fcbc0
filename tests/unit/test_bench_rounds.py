"""A benchmark run in rounds (`veilgate bench --rounds N`): which round is reported, and what the
table says about the others. The rounds themselves run in `tests/e2e/test_bench_cli.py`."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from veilgate_server.bench.report import render_table
from veilgate_server.bench.results import ScenarioResult, Target, median_round
from veilgate_server.bench.run import _rounds_baseline

MACHINE = {"cpu": "test cpu", "cores": 2, "python": "3", "grpcio": "1", "sqlite": "3", "postgres": None}
TARGET = Target("ratio", ">=", 0.33, "at least a third of bare")


def _round(ratio: float | None, *, errors: int = 0, bare: float = 4000.0) -> ScenarioResult:
    """One round's result, judged as the RPC scenarios judge theirs."""
    if ratio is None:
        scenario = ScenarioResult(name="evaluate", details={"error": "the gateway did not start"}).judge(TARGET)
        scenario.meets = False
        return scenario
    figures = {"cpu_us_per_call": 1000.0 / ratio, "p99_ratio": 2.0 / ratio, "errors": errors}
    scenario = ScenarioResult(
        name="evaluate", qps=bare * ratio, p50_ms=1 / ratio, p99_ms=3 / ratio, baseline_qps=bare, ratio=ratio
    )
    scenario.details.update(figures)
    return scenario.judge(TARGET, Target("errors", "<=", 0, "no failed calls"), extra={"errors": float(errors)})


@given(st.lists(st.floats(min_value=0.01, max_value=2.0, allow_nan=False), min_size=1, max_size=20))
def test_the_reported_round_is_the_median_and_every_figure_is_from_it(ratios: list[float]) -> None:
    rounds = [_round(r, bare=3000.0 + n) for n, r in enumerate(ratios)]
    reported = median_round(rounds)
    expected = sorted(ratios)[(len(ratios) - 1) // 2]  # the lower middle of an even count
    assert reported.ratio == expected
    chosen = rounds[reported.details["reported_round"] - 1]
    assert chosen.ratio == expected
    figures = ("qps", "p50_ms", "p99_ms", "baseline_qps", "meets")
    assert [getattr(reported, f) for f in figures] == [getattr(chosen, f) for f in figures]
    assert reported.details["cpu_us_per_call"] == chosen.details["cpu_us_per_call"]
    assert [r["p99_ratio"] for r in reported.details["each_round"]] == [2.0 / r for r in ratios]
    assert reported.meets == (expected >= 0.33)
    listed = reported.details["each_round"]
    assert [r["round"] for r in listed] == list(range(1, len(ratios) + 1))  # in the order run
    assert [r["ratio"] for r in listed] == ratios
    assert [r["baseline_qps"] for r in listed] == [3000.0 + n for n in range(len(ratios))]
    assert "each_round" not in chosen.details  # the round's own result is left as it was


def test_an_even_count_reports_the_lower_middle_round() -> None:
    reported = median_round([_round(0.40), _round(0.20), _round(0.35), _round(0.30)])
    assert (reported.ratio, reported.details["reported_round"], reported.meets) == (0.30, 4, False)


def test_a_round_with_failed_calls_makes_the_scenario_miss() -> None:
    reported = median_round([_round(0.5), _round(0.4, errors=3), _round(0.6)])
    assert reported.details["reported_round"] == 1
    assert reported.ratio == 0.5
    assert reported.meets is False
    assert [r["errors"] for r in reported.details["each_round"]] == [0, 3, 0]
    assert median_round([_round(0.5), _round(0.4), _round(0.6)]).meets is True


def test_a_round_that_could_not_be_measured_is_what_is_reported() -> None:
    reported = median_round([_round(0.5), _round(None), _round(0.6), _round(None)])
    assert reported.details["reported_round"] == 2
    assert reported.ratio is None
    assert reported.meets is False
    assert reported.details["error"] == "the gateway did not start"
    assert [r["ratio"] for r in reported.details["each_round"]] == [0.5, None, 0.6, None]


def _section(tls: float, mtls: float) -> dict[str, Any]:
    return {
        "server": "bare",
        "processes": 2,
        "concurrency": 16,
        "warmup_s": 1.0,
        "measured_s": 4.0,
        "tls": {"qps": tls, "processes": 1},
        "mtls": {"qps": mtls, "processes": 1},
        "runs": {},
    }


def test_the_baseline_of_a_run_in_rounds_is_each_transports_median_round() -> None:
    sections = [_section(3000.0, 2900.0), _section(3300.0, 2500.0), _section(3100.0, 2700.0), _section(2000.0, 4000)]
    baseline = _rounds_baseline(sections)
    assert baseline["tls"] == {"qps": 3000.0, "processes": 1, "round": 1}  # 2000, 3000 | 3100, 3300
    assert baseline["mtls"] == {"qps": 2700.0, "processes": 1, "round": 3}  # 2500, 2700 | 2900, 4000
    assert baseline["rounds"] == sections
    assert (baseline["concurrency"], baseline["measured_s"], baseline["processes"]) == (16, 4.0, 2)
    assert "runs" not in baseline
    assert "after" not in baseline


def test_the_table_gives_each_rounds_spread_and_warns_when_the_bare_server_moved() -> None:
    steady = [_section(3000.0, 2900.0), _section(3100.0, 2950.0), _section(3050.0, 3000.0)]
    scenario = median_round([_round(0.18, bare=2900.0), _round(0.15, bare=2950.0), _round(0.20, bare=3000.0)])
    table = render_table(MACHINE, _rounds_baseline(steady), [scenario])
    assert "4 s measured per run (2 server processes); 3 rounds, each scenario's median round reported" in table
    assert "bare TLS 3,000–3,100 QPS, bare mTLS 2,900–3,000 QPS" in table
    assert "  evaluate: ratio 0.150–0.200, 442–600 QPS, 5,000–6,667 µs of CPU a call; reported: round 1" in table
    assert "the baseline (1 server process, faster than 2; the median round, 3)" in table  # TLS: 3,050
    assert "between rounds" not in table
    assert "baseline again" not in table

    moved = [_section(3000.0, 2900.0), _section(3000.0, 3200.0)]  # mTLS 10.3% faster in round 2
    table = render_table(MACHINE, _rounds_baseline(moved), [scenario])
    assert "the machine's speed moved by more than 10% between rounds" in table

    once = render_table(MACHINE, steady[0], [_round(0.2)])  # a run of one round says nothing of rounds
    assert "rounds" not in once


def test_the_scenarios_run_once_after_the_rounds_are_tabled_beside_them() -> None:
    """The store scenarios and ingest run once after the rounds; their own details (ingest's say how
    its pushes rotate over its batches, under "rounds") must not be read as rounds."""
    sections = [_section(3000.0, 2900.0), _section(3100.0, 2950.0)]
    evaluate = median_round([_round(0.18), _round(0.15)])
    ingest = ScenarioResult(
        name="ingest", rate=20000.0, p50_ms=50.0, p99_ms=90.0,
        details={"rounds": "push n sends batch n mod batches", "concurrency": 4, "records_per_push": 500,
                 "cpu_us_per_record": 50.0, "records_per_core_second": 20000},
    )  # fmt: skip
    table = render_table(MACHINE, _rounds_baseline(sections), [evaluate, ingest])
    assert "  evaluate: ratio 0.150–0.180" in table
    assert "  ingest: about 20,000 records a second per core" in table
    assert "  ingest: ratio" not in table

"""The benchmark's table: how its RPC figures were measured, and what it says about a machine whose
speed moved during the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from veilgate.errors import ConfigurationError
from veilgate_server.bench.report import check_plot_file, render_table, write_plot
from veilgate_server.bench.results import ScenarioResult

MACHINE = {"cpu": "test cpu", "cores": 2, "python": "3", "grpcio": "1", "sqlite": "3", "postgres": None}


def _baseline(tls_after: float | None) -> dict[str, Any]:
    baseline: dict[str, Any] = {"tls": {"qps": 5000.0}, "mtls": {"qps": 4000.0}}
    if tls_after is not None:
        drift = {"tls": round(tls_after / 5000.0 - 1, 3), "mtls": 0.0}
        baseline["after"] = {"tls": {"qps": tls_after}, "mtls": {"qps": 4000.0}, "drift": drift}
    return baseline


def test_the_table_reports_the_baseline_measured_again_and_warns_when_the_machine_moved() -> None:
    scenarios = [ScenarioResult(name="audited_call", qps=2000.0, baseline_qps=5000.0, ratio=0.4)]

    steady = render_table(MACHINE, _baseline(4750.0), scenarios)
    assert "TLS 5,000 -> 4,750 QPS (-5.0%), mTLS 4,000 -> 4,000 QPS (+0.0%)" in steady
    assert "speed moved" not in steady

    moved = render_table(MACHINE, _baseline(5600.0), scenarios)
    assert "TLS 5,000 -> 5,600 QPS (+12.0%)" in moved
    assert "the machine's speed moved by more than 10% during the run" in moved

    failed = render_table(
        MACHINE, {**_baseline(None), "after": {"error": "the bare tls baseline completed no call"}}, scenarios
    )
    assert (
        "bare baseline again after the RPC scenarios: not measured (the bare tls baseline completed no call)" in failed
    )

    store_only = render_table(MACHINE, {}, scenarios)  # no RPC scenario ran: nothing measured again
    assert "baseline again" not in store_only


def test_the_table_says_how_the_rpc_load_was_run() -> None:
    scenarios = [ScenarioResult(name="audited_call", qps=2000.0, baseline_qps=5000.0, ratio=0.4)]
    load = {"concurrency": 4, "warmup_s": 1.0, "measured_s": 2.5}
    two = render_table(MACHINE, {**_baseline(None), **load, "processes": 2}, scenarios)
    assert "RPC load: 4 calls in flight, 1 s warm-up and 2.5 s measured per run (2 server processes)" in two
    one = render_table(MACHINE, {**_baseline(None), **load, "processes": 1}, scenarios)
    assert "2.5 s measured per run (1 server process)\n" in one
    assert "RPC load" not in render_table(MACHINE, {}, scenarios)  # no RPC scenario ran


def test_the_table_names_the_gateways_store() -> None:
    """`--rpc-store postgresql` and the SQLite default give tables of the same shape: the heading
    says which store the gateway scenarios ran on."""
    on_postgres = ScenarioResult(
        name="evaluate", qps=700.0, ratio=0.1, details={"store": "PostgreSQL at 127.0.0.1:5432, a fresh schema"}
    )
    table = render_table(MACHINE, _baseline(None), [on_postgres])
    assert "\nthe gateway's store: PostgreSQL at 127.0.0.1:5432, a fresh schema\n" in table
    store_only = ScenarioResult(name="log_append", rate=15657.0)
    assert "the gateway's store" not in render_table(MACHINE, {}, [store_only])  # no gateway scenario ran


def test_the_table_shows_the_bare_baseline_and_the_servers_cpu_per_call() -> None:
    """What a bank sizes from: calls per second and the server CPU each takes, the bare server's
    beside the gateway's, without asking for the JSON."""
    bare = {"qps": 5601.2, "p50_ms": 2.66, "p99_ms": 6.28, "cpu_us_per_call": 167.0, "processes": 1}
    mtls = {**bare, "qps": 5566.0, "cpu_us_per_call": 164.4, "processes": 2}
    baseline = {"tls": bare, "mtls": mtls, "processes": 2}
    evaluate = ScenarioResult(
        name="evaluate", qps=977.0, p50_ms=15.5, p99_ms=33.2, baseline_qps=5566.0, ratio=0.176,
        details={"cpu_us_per_call": 1580.3},
    )  # fmt: skip
    log_append = ScenarioResult(name="log_append", rate=15657.0, p50_ms=3.14, p99_ms=14.3)
    lines = render_table(MACHINE, baseline, [evaluate, log_append]).splitlines()
    header = next(line for line in lines if line.startswith("scenario"))
    assert header.split()[:7] == ["scenario", "qps/rate", "p50", "ms", "p99", "ms", "CPU"]
    rows = {line[:16].strip(): line for line in lines[lines.index(header) + 1 :] if line}
    assert rows["bare TLS"].split()[:6] == ["bare", "TLS", "5,601", "2.66", "6.28", "167"]
    assert rows["bare TLS"].endswith("the baseline (1 server process, faster than 2)")
    assert rows["bare mTLS"].split()[:6] == ["bare", "mTLS", "5,566", "2.66", "6.28", "164"]
    assert rows["bare mTLS"].endswith("the baseline (2 server processes)")
    assert rows["evaluate"].split()[:7] == ["evaluate", "977", "15.50", "33.20", "1,580", "5,566", "0.18"]
    assert rows["log_append"].split()[:6] == ["log_append", "15,657", "3.14", "14.30", "-", "-"]
    assert "bare" not in render_table(MACHINE, {}, [log_append])  # no RPC scenario ran: no baseline rows


def test_the_table_answers_the_sizing_questions_in_a_sentence_each() -> None:
    """How many checks a core serves, at what tail latency, and what the audit log costs a call:
    the issue's three questions, answered under the table from the run's own figures."""
    load = {"concurrency": 16, "warmup_s": 1.0, "measured_s": 4.0, "processes": 2}
    baseline = {"tls": {"qps": 5000.0}, "mtls": {"qps": 5000.0}, **load}
    evaluate = ScenarioResult(
        name="evaluate", qps=977.0, p99_ms=33.24, ratio=0.2,
        details={"cpu_us_per_call": 1580.3, "calls_per_core_second": 633, "cpu_us_over_bare": 1416.0},
    )  # fmt: skip
    audited = ScenarioResult(
        name="audited_call", qps=2000.0, p99_ms=9.1, ratio=0.4,
        details={"cpu_us_per_call": 407.4, "calls_per_core_second": 2455, "cpu_us_over_bare": 240.4,
                 "baseline_cpu_us_per_call": 167.0},
    )  # fmt: skip
    log_append = ScenarioResult(name="log_append", rate=15657.0, p50_ms=3.14, p99_ms=14.3)
    ingest = ScenarioResult(
        name="ingest", rate=31873.0, p50_ms=60.2, p99_ms=121.57,
        details={"concurrency": 4, "records_per_push": 500, "cpu_us_per_record": 46.2,
                 "records_per_core_second": 21645},
    )  # fmt: skip
    table = render_table(MACHINE, baseline, [evaluate, audited, log_append, ingest])
    assert table.endswith(
        "for sizing:\n"
        "  evaluate: about 633 calls a second per core of server CPU (1,580 µs a call), p99 33.2 ms at 16 in flight\n"
        "  the audit log (the interceptors and one durable entry): 240 µs of server CPU a call over a bare gRPC "
        "call (407 against 167 µs), and each call waits for its entry's commit\n"
        "  ingest: about 21,645 records a second per core of server CPU (46.2 µs a record), p99 121.6 ms a push "
        "of 500 at 4 in flight"
    )
    assert "for sizing" not in render_table(MACHINE, {}, [log_append])  # no RPC figure: nothing to size from


def test_the_plot_is_written_or_refused_with_the_reason(tmp_path: Path) -> None:
    series = {"bare TLS": [(1, 0.4, 0.9), (4, 0.8, 1.7)], "evaluate": [(1, 3.0, 5.0), (4, 7.0, 12.0)]}
    written = tmp_path / "latency.png"
    write_plot(series, written)
    assert written.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ConfigurationError, match=r"cannot write the plot to .*missing.*: No such file or directory"):
        write_plot(series, tmp_path / "missing" / "latency.png")


def test_the_plot_is_written_in_the_format_its_name_says_and_exactly_there(tmp_path: Path) -> None:
    """A name without a suffix is a PNG under that very name (matplotlib alone would add ".png" and
    write elsewhere than `veilgate bench` checked and reported); a suffix in capitals is honoured."""
    series = {"bare TLS": [(1, 0.4, 0.9), (4, 0.8, 1.7)]}
    for name, magic in (("latency", b"\x89PNG"), ("LATENCY.PNG", b"\x89PNG"), ("latency.svg", b"<?xml")):
        write_plot(series, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(magic), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATENCY.PNG", "latency", "latency.svg"]


def test_a_plot_format_matplotlib_cannot_write_is_refused_with_the_formats_it_can(tmp_path: Path) -> None:
    for name in ("latency.png", "latency.PDF", "latency.svg", "latency"):
        check_plot_file(tmp_path / name)  # accepted
    for name in ("latency.txt", "latency.json", "latency.png.bak"):
        with pytest.raises(ConfigurationError) as refused:
            check_plot_file(tmp_path / name)
        message = refused.value.message
        assert message.startswith(f"--plot {tmp_path / name}: matplotlib cannot write .{name.rsplit('.', 1)[1]} files")
        assert ".png" in message
        assert ".svg" in message
    assert not list(tmp_path.iterdir())  # a check writes nothing

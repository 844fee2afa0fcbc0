"""The RPC benchmark harness: percentiles, and a short real run of the baseline and both RPC scenarios.

The smoke run checks the shape of what is reported and that every call succeeded, never how fast it
was: timing is not a test on a shared machine."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from veilgate.errors import ConfigurationError
from veilgate_server.bench.harness import (
    ClientTls,
    LoadSpec,
    NoopWorkload,
    latency_stats,
    percentile,
    run_load,
)
from veilgate_server.bench.report import write_plot
from veilgate_server.bench.results import ScenarioResult, Target
from veilgate_server.bench.rpc_scenarios import (
    DELIVERY_ITEMS,
    RpcRun,
    _bare_servers,
    _certificates,
    bench_audited_call,
    bench_baseline,
    bench_evaluate,
    bench_get_my_data,
    bench_policy,
    latency_sweep,
)
from veilgate_server.rpc.processes import cpus_for, pinned_to, start_shielded
from veilgate_server.storage import Store

CLAIM = ("claimed_admission_date=2026-05-10", "claimed_discharge_date=2026-05-18", "hospital_code=H37010200015")
SMOKE_SECONDS = (0.2, 0.4)  # warm-up, measured
SMOKE = RpcRun(quick=True, seconds=SMOKE_SECONDS)
TWO_PROCESSES = replace(SMOKE, processes=2)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    assert percentile([1.0, 2.0], 50) == 1.0  # never interpolated
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 0)


def test_latency_stats_in_milliseconds_and_qps() -> None:
    stats = latency_stats([0.001] * 99 + [0.5], seconds=2.0, errors=1)
    assert (stats.calls, stats.errors) == (100, 1)
    assert stats.p50_ms == pytest.approx(1.0)
    assert stats.p99_ms == pytest.approx(1.0)
    assert stats.qps == pytest.approx(50.0)
    empty = latency_stats([], seconds=1.0)
    assert (empty.calls, empty.qps, empty.p99_ms) == (0, 0.0, 0.0)


def _check_figures(figures: dict[str, object]) -> None:
    assert figures["errors"] == 0, figures.get("first_error")
    calls, p50, p99 = figures["calls"], figures["p50_ms"], figures["p99_ms"]
    assert isinstance(calls, int)
    assert calls > 0
    for key in ("qps", "p50_ms", "p99_ms", "cpu_us_per_call", "switches_per_call"):
        value = figures[key]
        assert isinstance(value, float), key
        assert value > 0, key
    assert isinstance(p50, float)
    assert isinstance(p99, float)
    assert p50 <= p99


def test_meets_is_computed_from_the_targets_and_none_without_any() -> None:
    fast = Target("ratio", ">=", 0.5, "at least half")
    assert ScenarioResult(name="a", ratio=0.6).judge(fast).meets is True
    assert ScenarioResult(name="b", ratio=0.4).judge(fast).meets is False
    assert ScenarioResult(name="c").judge(fast).meets is None  # no figure: not judged
    untargeted = ScenarioResult(name="d", ratio=0.9).judge()
    assert untargeted.meets is None
    assert untargeted.target == ""


def _check_scenario(result: ScenarioResult, name: str, baseline_qps: float, *, targeted: bool = True) -> None:
    assert result.name == name
    assert result.skipped is None
    assert "error" not in result.details, result.details["error"]
    assert result.details["errors"] == 0, result.details.get("first_error")
    assert result.details["calls"] > 0
    assert result.qps is not None
    assert result.qps > 0
    assert result.p50_ms is not None
    assert result.p99_ms is not None
    assert 0 < result.p50_ms <= result.p99_ms
    assert result.baseline_qps == baseline_qps
    assert result.ratio == pytest.approx(result.qps / baseline_qps, abs=1e-3)
    assert result.details["cpu_us_per_call"] > 0
    assert result.details["switches_per_call"] > 0  # a gateway call waits for its log entry at least
    assert result.details["p99_ratio"] > 0
    if targeted:
        assert isinstance(result.meets, bool)
        assert result.target
    else:
        assert result.meets is None
    document = result.to_json()
    assert {"name", "qps", "p50_ms", "p99_ms", "baseline_qps", "ratio", "target", "meets"} <= set(document)


def test_rpc_scenarios_run_and_report_every_figure() -> None:
    """Served by two processes each, the gateway and the baseline; the baseline also by one."""
    baseline = bench_baseline(TWO_PROCESSES)
    assert (baseline["concurrency"], baseline["processes"]) == (16, 2)
    assert (baseline["warmup_s"], baseline["measured_s"]) == SMOKE_SECONDS
    assert set(baseline["runs"]) == {"1", "2"}
    for transport in ("tls", "mtls"):
        runs = [baseline["runs"][count][transport] for count in ("1", "2")]
        for figures in runs:
            _check_figures(figures)
        assert [figures["processes"] for figures in runs] == [1, 2]
        # Judged against the faster bare server.
        assert baseline[transport] == max(runs, key=lambda figures: figures["qps"])

    floor = bench_audited_call(baseline, TWO_PROCESSES)
    _check_scenario(floor, "audited_call", baseline["tls"]["qps"], targeted=False)
    assert floor.details["probe"]["gateway_id"]
    assert floor.details["processes"] == 2

    evaluate = bench_evaluate(baseline, TWO_PROCESSES)
    _check_scenario(evaluate, "evaluate", baseline["mtls"]["qps"])
    assert evaluate.details["probe"]["decision"] in {"ELIGIBLE", "NOT_ELIGIBLE", "REFER"}
    assert evaluate.details["consents"] * evaluate.details["consent_max_uses"] > evaluate.details["calls"]

    get_my_data = bench_get_my_data(baseline, SMOKE)  # one process
    _check_scenario(get_my_data, "get_my_data", baseline["tls"]["qps"])
    assert get_my_data.details["items_delivered"] == DELIVERY_ITEMS
    assert get_my_data.details["catalog_items"] == DELIVERY_ITEMS


def test_the_load_is_spread_over_every_server_process() -> None:
    """Two bare server processes share the calls of one load generator: each spends a fair part of
    the servers' CPU (round robin gives each half the calls)."""
    certs = _certificates()
    with _bare_servers(2, pin=True) as servers:
        assert len(set(servers.tls_ports)) == 2
        before = servers.usage_each()
        spec = LoadSpec(
            target=servers.target,
            tls=ClientTls(certs.root_certificates),
            workload=NoopWorkload(),
            warmup_seconds=0.2,
            measured_seconds=0.6,
        )
        result = run_load(spec, usage=servers.usage)
        after = servers.usage_each()
    assert result.total_errors == 0
    assert result.stats.calls > 100
    spent = [end[0] - start[0] for start, end in zip(before, after, strict=True)]
    assert min(spent) > 0.3 * sum(spent), spent


def _cpus_of_every_thread(pid: int) -> set[frozenset[int]]:
    """The CPU sets of each thread of process ``pid``, as the kernel has them."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_cpus_for_takes_the_first_cpus_this_process_may_use() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert cpus_for(1) == (allowed[0],)
    assert cpus_for(len(allowed)) == tuple(allowed)
    assert cpus_for(len(allowed) + 1) is None  # more processes than CPUs: not pinned at all
    with pytest.raises(ValueError, match="at least 1"):
        cpus_for(0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin two processes apart")
@pytest.mark.parametrize("pin", [True, False])
def test_each_server_process_runs_pinned_to_a_cpu_of_its_own(pin: bool) -> None:
    """Every thread of server process n (gRPC's included, started after the pin) runs on CPU
    ``pinned[n]``; without pinning, on every CPU the parent may use."""
    allowed = frozenset(os.sched_getaffinity(0))
    with _bare_servers(2, pin=pin) as servers:
        threads = [_cpus_of_every_thread(pid) for pid in servers.pids]
        assert all(len(os.listdir(f"/proc/{pid}/task")) > 2 for pid in servers.pids)  # the server's threads too
        if pin:
            assert servers.pinned is not None
            assert len(set(servers.pinned)) == 2
            assert threads == [{frozenset({cpu})} for cpu in servers.pinned]
        else:
            assert servers.pinned is None
            assert threads == [{allowed}, {allowed}]
    assert frozenset(os.sched_getaffinity(0)) == allowed  # the parent is never pinned


def test_pinned_to_holds_threads_started_inside_and_restores_afterwards() -> None:
    allowed = os.sched_getaffinity(0)
    cpu = min(allowed)
    seen: list[set[int]] = []
    with pinned_to(cpu):
        thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        thread.start()
        thread.join()
        assert os.sched_getaffinity(0) == {cpu}
    assert seen == [{cpu}]
    assert os.sched_getaffinity(0) == allowed


def test_a_cpu_that_cannot_be_pinned_to_is_a_clear_error_and_changes_nothing() -> None:
    allowed = os.sched_getaffinity(0)
    with pytest.raises(ConfigurationError, match="--no-pin"), pinned_to(max(allowed) + 4096):
        pass
    assert os.sched_getaffinity(0) == allowed


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_the_gateway_scenarios_run_on_postgresql_and_leave_nothing(database_url: str) -> None:
    """``--rpc-store postgresql``: the gateway, in two processes, keeps its store in a fresh schema
    of the server, dropped afterwards."""

    def bench_schemas() -> int:
        with Store.open(database_url) as store, store.engine.connect() as connection:
            count = connection.execute(
                text("SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'vg_bench_%'")
            ).scalar_one()
        return int(count)

    before = bench_schemas()
    baseline = bench_baseline(SMOKE)
    evaluate = bench_evaluate(baseline, replace(TWO_PROCESSES, postgres_url=database_url))
    _check_scenario(evaluate, "evaluate", baseline["mtls"]["qps"])
    assert evaluate.details["store"].startswith("PostgreSQL at ")
    get_my_data = bench_get_my_data(baseline, replace(SMOKE, postgres_url=database_url))
    _check_scenario(get_my_data, "get_my_data", baseline["tls"]["qps"])
    assert get_my_data.details["items_delivered"] == DELIVERY_ITEMS
    assert bench_schemas() == before


def test_the_latency_sweep_writes_a_plot_of_every_series(tmp_path: Path) -> None:
    """`veilgate bench --plot`: latency against calls in flight for the bare server and both gateway
    scenarios, measured in one sweep and written as a PNG; evaluate asks the policy of `--policy`
    (here an insurer's) and its series is named after it."""
    claim = bench_policy("insurance.inpatient_claim", CLAIM)
    series = latency_sweep(quick=True, levels=(1, 4), policy=claim)
    assert set(series) == {"bare TLS", "bare mTLS", "evaluate (insurance.inpatient_claim)", "get_my_data"}
    for label, points in series.items():
        assert [n for n, _, _ in points] == [1, 4], label
        assert all(0 < p50 <= p99 for _, p50, p99 in points), label
    plot = tmp_path / "latency.png"
    write_plot(series, plot)
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _report_sigint(pipe: Any) -> None:
    pipe.send(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_shielded_child_starts_with_sigint_ignored_and_the_parent_keeps_its_own() -> None:
    """A Ctrl-C that reaches a spawned child before its main sets what it does with it must not end
    it with a traceback: the child's interpreter starts with SIGINT ignored; the parent's handler
    and mask are as they were."""
    context = multiprocessing.get_context("spawn")
    handler, mask = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_report_sigint, args=(send,), daemon=True)
    start_shielded(child)
    ignored = receive.recv()
    child.join(30)
    assert ignored is True
    assert signal.getsignal(signal.SIGINT) == handler
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask

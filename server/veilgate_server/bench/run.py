"""Run the benchmark: the bare baseline first, then each scenario, with a progress line per step."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from veilgate.errors import ConfigurationError, VeilgateError
from veilgate_server.bench.results import ScenarioResult, lower_median, median_round
from veilgate_server.rpc.processes import process_count_problem, usable_cpus

if TYPE_CHECKING:
    from veilgate_server.bench.rpc_scenarios import BenchPolicy, RpcRun

__all__ = ["RPC_SCENARIOS", "SCENARIOS", "BenchRun", "run_bench"]

RPC_SCENARIOS = ("audited_call", "evaluate", "get_my_data")
STORE_SCENARIOS = ("log_append", "proofs", "audit_verify", "audit_export", "ingest", "rss")
SCENARIOS = RPC_SCENARIOS + STORE_SCENARIOS
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RPC_STORES = ("sqlite", "postgresql")
MAX_CONCURRENCY = 256  # one load-generator thread per call in flight
MIN_SECONDS, MAX_SECONDS = 1.0, 600.0  # a measured window; evaluate's setup grows with it (a consent per 100 calls)
MAX_ROUNDS = 20

Progress = Callable[[str], None]


@dataclass
class BenchRun:
    machine: dict[str, Any]
    baseline: dict[str, Any]
    scenarios: list[ScenarioResult]
    processes: int  # server processes the RPC scenarios were (or would have been) served by


def _scenario(name: str, baseline: dict[str, Any], postgres_url: str | None, rpc: RpcRun) -> ScenarioResult:
    from veilgate_server.bench import rpc_scenarios, store_scenarios

    quick = rpc.quick
    match name:
        case "audited_call":
            return rpc_scenarios.bench_audited_call(baseline, rpc)
        case "evaluate":
            return rpc_scenarios.bench_evaluate(baseline, rpc)
        case "get_my_data":
            return rpc_scenarios.bench_get_my_data(baseline, rpc)
        case "log_append":
            return store_scenarios.bench_log_append(quick=quick, postgres_url=postgres_url, pin=rpc.pin)
        case "proofs":
            return store_scenarios.bench_proofs(quick=quick)
        case "audit_verify":
            return store_scenarios.bench_audit_verify(quick=quick)
        case "audit_export":
            return store_scenarios.bench_audit_export(quick=quick)
        case "ingest":
            return rpc_scenarios.bench_ingest(rpc)
        case "rss":
            return store_scenarios.bench_rss(quick=quick, policies_dir=rpc.policies_dir)
    raise ConfigurationError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")


def run_bench(
    *,
    quick: bool,
    only: Sequence[str] | None,
    postgres_url: str | None,
    progress: Progress,
    processes: int | None = None,
    rpc_store: str = "sqlite",
    pin: bool = True,
    concurrency: int | None = None,
    seconds: float | None = None,
    policy: BenchPolicy | None = None,
    policies_dir: Path | None = None,
    rounds: int = 1,
) -> BenchRun:
    """The baseline, then each scenario, and the baseline again after the last RPC scenario (see
    :func:`~veilgate_server.bench.rpc_scenarios.bench_baseline_again`). RPC scenarios serve from
    ``processes`` server processes (default: one per core), and so does the baseline they are
    judged against; their gateway keeps its store on SQLite, or (``rpc_store="postgresql"``) on the
    PostgreSQL server of ``log_append``. ``pin``: each server process on a CPU of its own, as
    ``veilgate serve --processes`` runs them, and ``log_append``'s writers on one CPU, as in a
    server process. ``concurrency`` (calls in flight) and ``seconds`` (each load run's measured
    window) apply to the baseline and every RPC scenario alike; None: 16, and 15 s (4 s quick).
    ``ingest`` keeps 4 pushes (of 500 records) in flight unless ``concurrency`` is given.
    ``policy``: what ``evaluate`` asks (see :func:`~veilgate_server.bench.rpc_scenarios.bench_policy`);
    None: the consumer loan. ``policies_dir``: the catalog and policies the gateway scenarios and
    ``rss`` run under (a signed copy); None: the packaged ones.

    ``rounds`` above 1 measures the baseline and the RPC scenarios that many times in turn, each
    round the baseline first and then the scenarios, their order rotated by one from round to
    round; each scenario is judged against its own round's baseline and reported as its median
    round (see :func:`~veilgate_server.bench.results.median_round`). On a shared machine whose
    speed moves, that is steadier than one run, and the spread of the rounds says by how much. The
    other scenarios run once, after the rounds."""
    if rpc_store not in RPC_STORES:
        choices = ", ".join(RPC_STORES)
        raise ConfigurationError(f"unknown store {rpc_store!r} for the RPC scenarios; choose from {choices}")
    if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigurationError(f"--concurrency must be from 1 to {MAX_CONCURRENCY} calls in flight")
    if seconds is not None and not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ConfigurationError(f"--seconds must be from {MIN_SECONDS:g} to {MAX_SECONDS:g}")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ConfigurationError(f"--rounds must be from 1 to {MAX_ROUNDS}")
    from veilgate_server.bench import rpc_scenarios
    from veilgate_server.bench.report import machine_facts

    names = list(dict.fromkeys(only)) if only else list(SCENARIOS)  # in the order given, each once
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigurationError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    rpc_names = [n for n in names if n in RPC_SCENARIOS]
    if rounds > 1 and not rpc_names:
        raise ConfigurationError(f"--rounds applies to the RPC scenarios ({', '.join(RPC_SCENARIOS)}): none runs")
    if postgres_url is not None:
        given = postgres_url
    else:
        given = os.environ.get("VEILGATE_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL
    try:
        backend: str | None = make_url(given).get_backend_name()
    except ArgumentError:
        backend = None
    if backend != "postgresql":
        raise ConfigurationError("--postgres-url (or VEILGATE_BENCH_POSTGRES_URL) must be a postgresql:// URL")
    url: str | None = given
    machine = machine_facts(url)
    if machine["postgres"] is None:
        if rpc_store == "postgresql" and any(n in RPC_SCENARIOS for n in names):
            where = make_url(given)
            raise ConfigurationError(f"--rpc-store postgresql: no PostgreSQL answers at {where.host}:{where.port}")
        url = None
    processes = usable_cpus() if processes is None else processes  # one per core, as a deployment runs
    problem = process_count_problem(processes)
    if problem is not None:
        raise ConfigurationError(problem)
    rpc = rpc_scenarios.RpcRun(
        quick=quick,
        processes=processes,
        postgres_url=url if rpc_store == "postgresql" else None,
        pin=pin,
        concurrency=rpc_scenarios.CONCURRENCY if concurrency is None else concurrency,
        pushes=concurrency,
        seconds=None if seconds is None else (rpc_scenarios.default_durations(quick)[0], seconds),
        policy=policy or rpc_scenarios.BenchPolicy(),
        policies_dir=policies_dir,
    )
    if rounds > 1:
        baseline, measured = _in_rounds(rpc_names, rounds, rpc, url, progress)
        others = [n for n in names if n not in RPC_SCENARIOS]
        for index, name in enumerate(others, 1):
            progress(f"[{index}/{len(others)}] {name} ...")
            measured[name] = _timed(name, baseline, url, rpc)
        results = [measured[name] for name in names]
        return BenchRun(machine=machine, baseline=baseline, scenarios=results, processes=processes)
    baseline = {}
    if rpc_names:
        progress("baseline: bare grpcio over TLS and mTLS ...")
        baseline = rpc_scenarios.bench_baseline(rpc)
    last_rpc = rpc_names[-1] if rpc_names else None
    results = []
    for index, name in enumerate(names, 1):
        progress(f"[{index}/{len(names)}] {name} ...")
        results.append(_timed(name, baseline, url, rpc))
        if name == last_rpc:
            progress("baseline again: has the machine's speed moved since? ...")
            try:
                baseline["after"] = rpc_scenarios.bench_baseline_again(rpc, baseline)
            except VeilgateError as e:  # a check on the figures: its failure must not discard them
                baseline["after"] = {"error": e.message}
    return BenchRun(machine=machine, baseline=baseline, scenarios=results, processes=processes)


def _timed(name: str, baseline: dict[str, Any], postgres_url: str | None, rpc: RpcRun) -> ScenarioResult:
    started = time.perf_counter()
    result = _scenario(name, baseline, postgres_url, rpc)
    result.details.setdefault("wall_seconds", round(time.perf_counter() - started, 1))
    return result


def _in_rounds(
    names: Sequence[str], rounds: int, rpc: RpcRun, postgres_url: str | None, progress: Progress
) -> tuple[dict[str, Any], dict[str, ScenarioResult]]:
    """The RPC scenarios ``names`` in ``rounds`` rounds (see :func:`run_bench`): the JSON
    ``baseline`` section, and each scenario's median round."""
    from veilgate_server.bench import rpc_scenarios

    sections: list[dict[str, Any]] = []
    measured: dict[str, list[ScenarioResult]] = {name: [] for name in names}
    for number in range(1, rounds + 1):
        progress(f"round {number}/{rounds}: baseline: bare grpcio over TLS and mTLS ...")
        section = rpc_scenarios.bench_baseline(rpc)
        sections.append(section)
        turn = (number - 1) % len(names)
        order = [*names[turn:], *names[:turn]]
        for index, name in enumerate(order, 1):
            progress(f"round {number}/{rounds}: [{index}/{len(order)}] {name} ...")
            result = _timed(name, section, postgres_url, rpc)
            result.details["order_in_round"] = index
            measured[name].append(result)
    return _rounds_baseline(sections), {name: median_round(results) for name, results in measured.items()}


def _rounds_baseline(sections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON ``baseline`` of a run in rounds: how it was measured, as in one round; for each
    transport the round whose bare QPS is the median (the lower of the middle two), numbered
    ``round``; and every round's own section under ``rounds``."""
    baseline = {key: value for key, value in sections[0].items() if key not in ("tls", "mtls", "runs")}
    for name in ("tls", "mtls"):
        median = lower_median([float(section[name]["qps"]) for section in sections])
        baseline[name] = {**sections[median][name], "round": median + 1}
    baseline["rounds"] = list(sections)
    return baseline

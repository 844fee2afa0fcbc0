"""The benchmark's output: machine facts, the baseline, the scenarios; as JSON, a table, or a plot.

JSON schema (stable; other tools read it)::

    {"machine": {"cpu", "cores", "python", "grpcio", "sqlite", "postgres", "veilgate"},
     "baseline": {..., "after"?: {"tls", "mtls", "drift": {"tls", "mtls"}} | {"error"},
                  "rounds"?: [{... one round's baseline ...}, ...]},
     "scenarios": [{"name", "qps" | "rate", "p50_ms", "p99_ms", "baseline_qps", "ratio",
                    "target", "meets", "skipped"?, "details"}]}

A run in rounds (``--rounds``) has ``baseline.rounds`` instead of ``baseline.after``, and each RPC
scenario's ``details.each_round`` (each round's figures) and ``details.reported_round``.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc

from veilgate.errors import ConfigurationError
from veilgate_server.bench.results import ScenarioResult

__all__ = ["DRIFT_WARNING", "check_plot_file", "machine_facts", "pyplot", "render_json", "render_table", "write_plot"]

DRIFT_WARNING = 0.10
"""A bare server this much faster or slower after the gateway scenarios than before them: the
machine's speed moved during the run, and the table says the ratios may be off by as much."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _postgres_version(url: str | None) -> str | None:
    if not url:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from veilgate.errors import VeilgateError
    from veilgate_server.storage.db import create_engine_for

    try:
        engine = create_engine_for(url)
        try:
            with engine.connect() as conn:
                return str(conn.exec_driver_sql("SHOW server_version").scalar_one())
        finally:
            engine.dispose()
    except (VeilgateError, SQLAlchemyError):  # unreachable: the report shows n/a
        return None


def _veilgate_version() -> str | None:
    try:
        return metadata.version("veilgate")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return None


def machine_facts(postgres_url: str | None) -> dict[str, Any]:
    """What the figures were measured on, and with which release of the gateway: runs are compared
    across both."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlite": sqlite3.sqlite_version,
        "postgres": _postgres_version(postgres_url),
        "veilgate": _veilgate_version(),
    }


def render_json(machine: dict[str, Any], baseline: dict[str, Any], scenarios: Sequence[ScenarioResult]) -> str:
    return json.dumps(
        {"machine": machine, "baseline": baseline, "scenarios": [s.to_json() for s in scenarios]},
        indent=2,
        sort_keys=False,
        default=str,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _load_line(baseline: dict[str, Any]) -> list[str]:
    """How every RPC figure was measured, when the run had RPC scenarios."""
    if "concurrency" not in baseline:
        return []
    rounds = len(baseline.get("rounds", ()))
    in_rounds = f"; {rounds} rounds, each scenario's median round reported" if rounds else ""
    return [
        f"RPC load: {baseline['concurrency']} calls in flight, {baseline['warmup_s']:g} s warm-up and "
        f"{baseline['measured_s']:g} s measured per run ({_processes(baseline['processes'])}){in_rounds}"
    ]


def _store_line(scenarios: Sequence[ScenarioResult]) -> list[str]:
    """Where the gateway scenarios' gateway kept its store (``--rpc-store``), when one ran: the same
    table from SQLite and from PostgreSQL must not read alike."""
    store = next((s.details["store"] for s in scenarios if "store" in s.details), None)
    return [] if store is None else [f"the gateway's store: {store}"]


def _policy_line(scenarios: Sequence[ScenarioResult]) -> list[str]:
    """Whose catalog and policies the gateway ran under, when not the packaged ones; what evaluate
    asked, when it ran."""
    lines = []
    source = next(
        (s.details["policies"] for s in scenarios if s.details.get("policies", "packaged") != "packaged"), None
    )
    if source is not None:
        lines.append(f"catalog and policies: a signed copy of {source}")
    for s in scenarios:
        if s.name == "evaluate" and "policy" in s.details:
            stated = ", ".join(f"{k}={v}" for k, v in s.details.get("parameters", {}).items())
            parameters = f"parameters {stated}" if stated else "no parameters"
            lines.append(f"evaluate: policy {s.details['policy']} ({s.details.get('institution_kind')}), {parameters}")
            break
    return lines


def _processes(count: int) -> str:
    return f"{count} server process{'' if count == 1 else 'es'}"


def _baseline_note(bare: dict[str, Any], processes: object) -> str:
    """Which bare server gave the baseline: the run's process count, or one process when that was the
    faster (see ``rpc_scenarios.bench_baseline``)."""
    count = bare.get("processes")
    if not isinstance(count, int):
        return "the baseline"
    faster = f", faster than {processes}" if isinstance(processes, int) and processes != count else ""
    median = f"; the median round, {bare['round']}" if "round" in bare else ""
    return f"the baseline ({_processes(count)}{faster}{median})"


def _row(
    name: str,
    figures: tuple[float | None, float | None, float | None, float | None],
    baseline_qps: float | None,
    ratio: float | None,
    meets: str,
    target: str,
) -> str:
    """One line of the table; ``figures`` are QPS (or rate), p50 ms, p99 ms and CPU µs per call."""
    value, p50, p99, cpu = figures
    return (
        f"{name:<16} {_fmt(value, ',.0f'):>12} {_fmt(p50, '.2f'):>8} {_fmt(p99, '.2f'):>8} {_fmt(cpu, ',.0f'):>12} "
        f"{_fmt(baseline_qps, ',.0f'):>10} {_fmt(ratio, '.2f'):>7}  {meets:<6} {target}"
    )


def render_table(machine: dict[str, Any], baseline: dict[str, Any], scenarios: Sequence[ScenarioResult]) -> str:
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, SQLite {machine['sqlite']}, PostgreSQL {machine['postgres'] or 'n/a'}; "
        f"Veilgate {machine.get('veilgate') or 'n/a'}",
        *_load_line(baseline),
        *_store_line(scenarios),
        *_policy_line(scenarios),
        "",
        f"{'scenario':<16} {'qps/rate':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/call':>12} "
        f"{'baseline':>10} {'ratio':>7}  {'meets':<6} target",
    ]
    for name, label in (("tls", "bare TLS"), ("mtls", "bare mTLS")):
        if name in baseline:
            bare = baseline[name]
            figures = (bare.get("qps"), bare.get("p50_ms"), bare.get("p99_ms"), bare.get("cpu_us_per_call"))
            lines.append(_row(label, figures, None, None, "-", _baseline_note(bare, baseline.get("processes"))))
    for s in scenarios:
        value = s.qps if s.qps is not None else s.rate
        meets = "skip" if s.skipped else {True: "yes", False: "NO", None: "-"}[s.meets]
        figures = (value, s.p50_ms, s.p99_ms, s.details.get("cpu_us_per_call"))
        lines.append(_row(s.name, figures, s.baseline_qps, s.ratio, meets, s.skipped or s.target))
    lines += _sizing_lines(baseline, scenarios)
    lines += _rounds_lines(baseline, scenarios)
    after = baseline.get("after")
    if after and "error" in after:
        lines += ["", f"bare baseline again after the RPC scenarios: not measured ({after['error']})"]
    elif after:
        drift = after["drift"]
        lines += [
            "",
            "bare baseline again after the RPC scenarios: "
            + ", ".join(
                f"{label} {float(baseline[name]['qps']):,.0f} -> {float(after[name]['qps']):,.0f} QPS "
                f"({drift[name]:+.1%})"
                for name, label in (("tls", "TLS"), ("mtls", "mTLS"))
            )
            + "; ratios are against the first",
        ]
        if max(abs(drift["tls"]), abs(drift["mtls"])) > DRIFT_WARNING:
            lines.append(
                f"the machine's speed moved by more than {DRIFT_WARNING:.0%} during the run: "
                "the ratios may be off by as much"
            )
    return "\n".join(lines)


def _sizing_lines(baseline: dict[str, Any], scenarios: Sequence[ScenarioResult]) -> list[str]:
    """The sizing questions the benchmark answers, in a sentence each: the calls (or, for ingest,
    records) a core of server CPU serves and at what tail latency, and what the audit log costs a
    call (the audited no-op call's CPU over the bare server's)."""
    lines = []
    for s in scenarios:
        cpu, over = s.details.get("cpu_us_per_call"), s.details.get("cpu_us_over_bare")
        in_flight = s.details.get("concurrency", baseline.get("concurrency"))
        if s.name == "audited_call" and over is not None:
            bare = s.details["baseline_cpu_us_per_call"]
            lines.append(
                f"  the audit log (the interceptors and one durable entry): {over:,.0f} µs of server CPU a call over "
                f"a bare gRPC call ({cpu:,.0f} against {bare:,.0f} µs), and each call waits for its entry's commit"
            )
        elif s.name == "ingest" and s.details.get("records_per_core_second") and s.p99_ms is not None:
            lines.append(
                f"  ingest: about {s.details['records_per_core_second']:,} records a second per core of server CPU "
                f"({s.details['cpu_us_per_record']:,.1f} µs a record), p99 {s.p99_ms:.1f} ms a push of "
                f"{s.details['records_per_push']} at {in_flight} in flight"
            )
        elif s.details.get("calls_per_core_second") is not None and s.p99_ms is not None:
            lines.append(
                f"  {s.name}: about {s.details['calls_per_core_second']:,} calls a second per core of server CPU "
                f"({cpu:,.0f} µs a call), p99 {s.p99_ms:.1f} ms at {in_flight} in flight"
            )
    return ["", "for sizing:", *lines] if lines else []


def _spread(values: Sequence[float], spec: str) -> str:
    return f"{min(values):{spec}}–{max(values):{spec}}"


def _rounds_lines(baseline: dict[str, Any], scenarios: Sequence[ScenarioResult]) -> list[str]:
    """For a run in rounds: how far each figure moved from round to round, and a warning when the
    bare server itself moved by more than :data:`DRIFT_WARNING` (its slowest against its fastest)."""
    sections = baseline.get("rounds")
    if not sections:
        return []
    bare = {name: [float(section[name]["qps"]) for section in sections] for name in ("tls", "mtls")}
    lines = [
        "",
        f"over {len(sections)} rounds, each scenario against the bare baseline measured at the start of its round: "
        f"bare TLS {_spread(bare['tls'], ',.0f')} QPS, bare mTLS {_spread(bare['mtls'], ',.0f')} QPS",
    ]
    for s in scenarios:
        measured = [r for r in s.details.get("each_round", ()) if r.get("ratio") is not None]
        if measured:
            ratios, qps = [r["ratio"] for r in measured], [r["qps"] for r in measured]
            cpu = [r["cpu_us_per_call"] for r in measured if r.get("cpu_us_per_call") is not None]
            per_call = f", {_spread(cpu, ',.0f')} µs of CPU a call" if cpu else ""
            lines.append(
                f"  {s.name}: ratio {_spread(ratios, '.3f')}, {_spread(qps, ',.0f')} QPS{per_call}; "
                f"reported: round {s.details['reported_round']}"
            )
    if any(max(qps) > min(qps) * (1 + DRIFT_WARNING) for qps in bare.values()):
        lines.append(
            f"the machine's speed moved by more than {DRIFT_WARNING:.0%} between rounds: "
            "each ratio's spread says by how much to trust it"
        )
    return lines


def pyplot() -> Any:
    """matplotlib's pyplot, set to draw without a display; :class:`ConfigurationError` naming the
    extra to install when it is missing (``veilgate bench --plot`` asks before its run)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigurationError("--plot needs matplotlib: pip install 'veilgate[bench]'") from e
    return plt


def check_plot_file(path: Path) -> None:
    """Refuse, before a run of several minutes, a plot file matplotlib would refuse at its end: its
    suffix must name a format matplotlib writes (``.png``, ``.svg``, ``.pdf``, ...; a name without
    one is written as PNG). Also refuses when matplotlib is missing (see :func:`pyplot`)."""
    pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if _plot_format(path) not in formats:
        raise ConfigurationError(
            f"--plot {path}: matplotlib cannot write .{_plot_format(path)} files; name a file ending in one of "
            + ", ".join(f".{name}" for name in sorted(formats))
        )


def _plot_format(path: Path) -> str:
    """The format a plot is written in: its file's suffix, in any case, or PNG for a name without one.
    Always named to matplotlib, which would otherwise write "latency" to "latency.png"."""
    return path.suffix.lower().removeprefix(".") or "png"


def write_plot(series: dict[str, list[tuple[int, float, float]]], path: Path) -> None:
    """Latency versus concurrency: ``series`` maps a label to (calls in flight, p50 ms, p99 ms)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5), dpi=110)
    for label, points in series.items():
        xs = [p[0] for p in points]
        line = axis.plot(xs, [p[1] for p in points], marker="o", label=f"{label} p50")[0]
        axis.plot(xs, [p[2] for p in points], marker="x", linestyle="--", color=line.get_color(), label=f"{label} p99")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("calls in flight")
    axis.set_ylabel("latency (ms)")
    axis.set_title("Veilgate latency versus concurrency (same machine, same run)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    try:
        figure.savefig(path, format=_plot_format(path))
    except OSError as e:
        raise ConfigurationError(f"cannot write the plot to {path}: {e.strerror}") from e
    finally:
        plt.close(figure)

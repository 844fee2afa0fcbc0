"""`veilgate bench` as a user runs it: the JSON contract and clear errors. Speed is never asserted
here; the benchmark itself compares against a baseline taken in the same run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from veilgate_server.config import default_policies_dir
from veilgate_server.rpc.processes import max_processes


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veilgate_server.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
        check=False,
    )


def test_json_output_follows_the_schema() -> None:
    result = _bench("--quick", "--scenario", "ingest", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"machine", "baseline", "scenarios"}
    assert {"cpu", "cores", "python", "grpcio", "sqlite", "postgres", "veilgate"} <= set(report["machine"])
    assert report["machine"]["veilgate"] == metadata.version("veilgate")  # which release measured it
    [scenario] = report["scenarios"]
    assert scenario["name"] == "ingest"
    assert scenario["rate"] > 0
    assert 0 < scenario["p50_ms"] <= scenario["p99_ms"]
    assert scenario["meets"] in (True, False)
    assert scenario["details"]["errors"] == 0
    assert scenario["details"]["probe"]["stored"] == scenario["details"]["records_per_push"]
    per_record = scenario["details"]["cpu_us_per_record"]  # rounded to 0.1 µs from the push's CPU
    assert scenario["details"]["records_per_core_second"] == pytest.approx(1e6 / per_record, rel=0.1 / per_record)
    assert "[1/1] ingest" in result.stderr  # the progress line


def test_scenario_may_be_given_several_times() -> None:
    """Each scenario named runs once, in the order given: a second --scenario adds to the first
    rather than silently replacing it."""
    named = ("--scenario", "audit_export", "--scenario", "audit_verify", "--scenario", "audit_export")
    result = _bench("--quick", *named, "--json", "-")
    assert result.returncode == 0, result.stderr
    assert [s["name"] for s in json.loads(result.stdout)["scenarios"]] == ["audit_export", "audit_verify"]
    assert "[2/2] audit_verify" in result.stderr
    unknown = _bench("--scenario", "audit_export", "--scenario", "warp_speed")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("veilgate: error: unknown scenario 'warp_speed'")


def test_the_quick_set_runs_every_scenario_and_reports_its_figures() -> None:
    """`veilgate bench --quick --json -`, as CI may run it: the schema, and figures from every
    scenario (never whether a target was met: timing is not a test)."""
    from veilgate_server.bench.run import SCENARIOS

    result = _bench("--quick", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"machine", "baseline", "scenarios"}
    baseline = report["baseline"]
    for transport in ("tls", "mtls"):
        assert baseline[transport]["qps"] > 0
        again = baseline["after"][transport]  # measured again once the RPC scenarios had run
        assert again["qps"] > 0
        assert again["processes"] == baseline[transport]["processes"]
        drift = baseline["after"]["drift"][transport]
        assert drift == pytest.approx(again["qps"] / baseline[transport]["qps"] - 1, abs=1e-3)
    cores = os.cpu_count() or 1
    assert report["baseline"]["processes"] == cores  # one server process per core by default
    scenarios = {scenario["name"]: scenario for scenario in report["scenarios"]}
    assert list(scenarios) == list(SCENARIOS)
    for name, scenario in scenarios.items():
        assert {"name", "target", "meets"} <= set(scenario), name
        assert scenario["meets"] in (True, False, None), name
        assert "error" not in scenario["details"], (name, scenario["details"].get("error"))
    for name in ("audited_call", "evaluate", "get_my_data"):
        rpc = scenarios[name]
        assert rpc["qps"] > 0, name
        assert 0 < rpc["p50_ms"] <= rpc["p99_ms"], name
        assert rpc["ratio"] == pytest.approx(rpc["qps"] / rpc["baseline_qps"], abs=1e-3), name
        assert rpc["details"]["cpu_us_per_call"] > 0, name
        assert rpc["details"]["processes"] == cores, name
    assert scenarios["log_append"]["rate"] > 0
    assert scenarios["proofs"]["p99_ms"] > 0
    assert scenarios["audit_verify"]["rate"] > 0
    assert scenarios["audit_export"]["rate"] > 0
    assert scenarios["ingest"]["rate"] > 0
    assert scenarios["rss"]["details"]["rss_mb"] > 0


def test_a_table_by_default_and_a_clear_error_for_an_unknown_scenario() -> None:
    table = _bench("--quick", "--scenario", "audit_export")
    assert table.returncode == 0
    assert "scenario" in table.stdout
    assert "audit_export" in table.stdout
    unknown = _bench("--scenario", "warp_speed")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("veilgate: error: unknown scenario 'warp_speed'")
    assert "Traceback" not in unknown.stderr
    no_servers = _bench("--quick", "--scenario", "evaluate", "--processes", "0")
    assert no_servers.returncode == 1
    assert no_servers.stderr.startswith(f"veilgate: error: --processes must be from 1 to {max_processes()} (")
    too_many = _bench("--quick", "--scenario", "evaluate", "--processes", str(max_processes() + 1))
    assert too_many.returncode == 1
    assert too_many.stderr.startswith(f"veilgate: error: --processes must be from 1 to {max_processes()} (")
    for option, value, message in (
        ("--concurrency", "0", "--concurrency must be from 1 to 256 calls in flight"),
        ("--concurrency", "257", "--concurrency must be from 1 to 256 calls in flight"),
        ("--seconds", "0.5", "--seconds must be from 1 to 600"),
        ("--seconds", "nan", "--seconds must be from 1 to 600"),
        ("--postgres-url", "garbage", "--postgres-url (or VEILGATE_BENCH_POSTGRES_URL) must be a postgresql:// URL"),
        ("--postgres-url", "", "--postgres-url must not be empty"),
        ("--rounds", "0", "--rounds must be from 1 to 20"),
        ("--rounds", "21", "--rounds must be from 1 to 20"),
    ):
        refused = _bench("--quick", "--scenario", "evaluate", option, value)
        assert refused.returncode == 1, (option, value)
        assert refused.stderr.strip() == f"veilgate: error: {message}"
    unreachable = _bench(
        "--quick",
        "--scenario",
        "evaluate",
        "--rpc-store",
        "postgresql",
        "--postgres-url",
        "postgresql://nobody@127.0.0.1:1/x",
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip() == "veilgate: error: --rpc-store postgresql: no PostgreSQL answers at 127.0.0.1:1"
    no_rounds = _bench("--quick", "--scenario", "proofs", "--rounds", "2")
    assert no_rounds.returncode == 1
    assert no_rounds.stderr.strip() == (
        "veilgate: error: --rounds applies to the RPC scenarios (audited_call, evaluate, get_my_data): none runs"
    )


def test_calls_in_flight_and_the_measured_window_are_the_callers() -> None:
    """A bank sizes at its own concurrency: `--concurrency` and `--seconds` set every RPC load run,
    the baseline's too. With one call in flight, Little's law bounds what was measured: QPS times the
    mean latency is the mean number in flight, at most 1, and the median is at most twice the mean
    (Markov's inequality), so QPS x p50 <= 2. Sixteen in flight, the default, give about 16."""
    result = _bench("--quick", "--scenario", "audited_call", "--concurrency", "1", "--seconds", "1", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    baseline = report["baseline"]
    [scenario] = report["scenarios"]
    assert (baseline["concurrency"], baseline["warmup_s"], baseline["measured_s"]) == (1, 1.0, 1.0)
    details = scenario["details"]
    assert (details["concurrency"], details["warmup_s"], details["measured_s"]) == (1, 1.0, 1.0)
    for name, figures in (("bare TLS", baseline["tls"]), ("bare mTLS", baseline["mtls"]), ("audited", scenario)):
        assert figures["qps"] > 0, name
        assert figures["qps"] * figures["p50_ms"] / 1000 <= 2.0, (name, figures)
    # the sizing answers, from the run's own CPU figures: calls a core serves, and the audit's cost a call
    assert details["calls_per_core_second"] == round(1e6 / details["cpu_us_per_call"])
    over_bare = details["cpu_us_per_call"] - baseline["tls"]["cpu_us_per_call"]
    assert details["cpu_us_over_bare"] == pytest.approx(over_bare, abs=0.11)


def test_rounds_judge_each_scenario_against_its_own_rounds_baseline() -> None:
    """`--rounds 2`: the baseline and the RPC scenarios twice, their order turned by one the second
    time, each round's scenario against the baseline measured at the start of that round; each
    scenario is reported as its median round, every figure from that round; the store scenarios
    run once, after the rounds."""
    named = ("--scenario", "evaluate", "--scenario", "audit_export", "--scenario", "audited_call")
    result = _bench("--quick", *named, "--rounds", "2", "--seconds", "1", "--concurrency", "2", "--json", "-")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.endswith(" ...")]
    assert progress == [
        "round 1/2: baseline: bare grpcio over TLS and mTLS ...",
        "round 1/2: [1/2] evaluate ...",
        "round 1/2: [2/2] audited_call ...",
        "round 2/2: baseline: bare grpcio over TLS and mTLS ...",
        "round 2/2: [1/2] audited_call ...",
        "round 2/2: [2/2] evaluate ...",
        "[1/1] audit_export ...",
    ]
    report = json.loads(result.stdout)
    baseline = report["baseline"]
    rounds = baseline["rounds"]
    assert len(rounds) == 2
    assert "after" not in baseline
    bare = {name: [float(r[name]["qps"]) for r in rounds] for name in ("tls", "mtls")}
    for name in ("tls", "mtls"):
        assert baseline[name] == {**rounds[baseline[name]["round"] - 1][name], "round": baseline[name]["round"]}
        assert baseline[name]["qps"] == min(bare[name])  # the lower middle of two
    scenarios = {s["name"]: s for s in report["scenarios"]}
    assert list(scenarios) == ["evaluate", "audit_export", "audited_call"]  # in the order named
    for name, transport in (("evaluate", "mtls"), ("audited_call", "tls")):
        scenario = scenarios[name]
        listed = scenario["details"]["each_round"]
        assert [r["round"] for r in listed] == [1, 2]
        assert [r["baseline_qps"] for r in listed] == bare[transport]
        for r in listed:
            assert r["qps"] > 0
            assert r["errors"] == 0
            assert r["ratio"] == pytest.approx(r["qps"] / r["baseline_qps"], abs=0.0011)  # QPS to 0.1, ratio to 0.001
        reported = listed[scenario["details"]["reported_round"] - 1]
        assert reported["ratio"] == min(r["ratio"] for r in listed)
        assert {k: scenario[k] for k in ("qps", "p50_ms", "p99_ms", "baseline_qps", "ratio", "meets")} == {
            k: reported[k] for k in ("qps", "p50_ms", "p99_ms", "baseline_qps", "ratio", "meets")
        }
    for name, order in (("evaluate", (1, 2)), ("audited_call", (2, 1))):  # the place it ran in each round
        details = scenarios[name]["details"]
        assert details["order_in_round"] == order[details["reported_round"] - 1]
    assert "each_round" not in scenarios["audit_export"]["details"]
    assert scenarios["audit_export"]["rate"] > 0


def _insurers_policies(tmp_path: Path) -> Path:
    """An operator's catalog and policies: the packaged ones without the credit policies, and with a
    policy of its own that no packaged directory has."""
    policies = tmp_path / "insurers-policies"
    shutil.copytree(default_policies_dir(), policies, ignore=shutil.ignore_patterns("MANIFEST"))
    shutil.rmtree(policies / "credit")
    underwriting = (policies / "insurance" / "health_underwriting" / "v1" / "policy.yaml").read_text()
    own = policies / "insurance" / "travel_underwriting" / "v1"
    own.mkdir(parents=True)
    (own / "policy.yaml").write_text(
        underwriting.replace("id: insurance.health_underwriting", "id: insurance.travel_underwriting")
    )
    return policies


def test_evaluate_asks_the_policy_named_and_a_mistake_is_refused_before_the_run(tmp_path: Path) -> None:
    """An insurer sizes for the policy it will call, and an operator for the policies it will
    deploy: `--policy` (with `--param`) sets what every evaluation asks, `--policies-dir` whose
    catalog and policies the gateway serves; an unknown policy, a parameter the gateway would refuse
    or a directory it could not serve stops the run before anything is measured, rather than failing
    every call of it."""
    policies = _insurers_policies(tmp_path)
    asked = ("--policy", "insurance.travel_underwriting")  # served only from --policies-dir
    result = _bench(
        "--quick", "--scenario", "evaluate", *asked, "--policies-dir", str(policies),
        "--seconds", "1", "--concurrency", "2", "--json", "-",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [scenario] = json.loads(result.stdout)["scenarios"]
    details = scenario["details"]
    assert details["policies"] == str(policies)
    assert (details["policy"], details["institution_kind"], details["parameters"]) == (
        "insurance.travel_underwriting",
        "insurer",
        {},
    )
    assert details["errors"] == 0, details.get("first_error")
    assert details["calls"] > 0
    assert details["probe"]["decision"] in {"ELIGIBLE", "NOT_ELIGIBLE", "REFER"}
    for args, message in (
        (("--policy", "credit.payday"), "--policy 'credit.payday': no such policy; choose from "),
        (("--policy", "credit.mortgage_prequal"), "--policy credit.mortgage_prequal needs --param NAME=VALUE for: "),
        (("--param", "requested_amount_band=all_of_it"), "--param: parameter 'requested_amount_band' must be one of "),
        (("--param", "requested_amount_band"), "--param 'requested_amount_band': give NAME=VALUE"),
        (
            ("--policies-dir", str(policies)),
            f"--policies-dir {policies} has no credit.consumer_loan, which evaluate asks unless --policy names "
            "another; choose from insurance.health_underwriting, insurance.inpatient_claim, "
            "insurance.travel_underwriting",
        ),
        (
            ("--policies-dir", str(tmp_path / "nowhere"), *asked),
            f"--policies-dir {tmp_path / 'nowhere'}: no catalog.yaml there; name the directory of a catalog",
        ),
    ):
        refused = _bench("--quick", "--scenario", "evaluate", *args)
        assert refused.returncode == 1, args
        assert refused.stderr.startswith(f"veilgate: error: {message}"), refused.stderr
        assert "baseline" not in refused.stderr  # nothing ran
    from_env = subprocess.run(
        [sys.executable, "-m", "veilgate_server.cli", "bench", "--quick", "--scenario", "evaluate", *asked],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VEILGATE_POLICIES_DIR": str(tmp_path / "nowhere")},
        check=False,
    )  # read as every command reads it, and named as such when wrong
    assert from_env.returncode == 1
    assert from_env.stderr.startswith(f"veilgate: error: VEILGATE_POLICIES_DIR {tmp_path / 'nowhere'}: no catalog.yaml")
    unused = _bench("--quick", "--scenario", "audit_export", *asked)
    assert unused.returncode == 1
    assert unused.stderr.strip() == (
        "veilgate: error: --policy and --param apply to the evaluate scenario and the plot: neither runs"
    )


def test_the_options_of_a_kept_gateway_are_refused_not_ignored(tmp_path: Path) -> None:
    """bench builds its own gateways and stores: a --data-dir or --database-url it would not use is
    refused by name, not silently left out of the measurement."""
    for option, value, reason in (
        ("--data-dir", str(tmp_path), "it works in temporary directories it removes afterwards"),
        (
            "--database-url",
            f"sqlite:///{tmp_path}/kept.db",
            "it builds its stores afresh (the gateway's on PostgreSQL: ",
        ),
    ):
        refused = _bench("--quick", "--scenario", "audit_export", option, value)
        assert refused.returncode == 1, option
        assert refused.stderr.startswith(f"veilgate: error: bench does not take {option}: {reason}"), refused.stderr
        assert "audit_export ..." not in refused.stderr
    assert list(tmp_path.iterdir()) == []
    offered = _bench("--help").stdout
    assert "--policies-dir" in offered
    assert "--data-dir" not in offered
    assert "--database-url" not in offered


def test_outputs_that_cannot_be_written_are_refused_before_the_run(tmp_path: Path) -> None:
    """A full run takes minutes: an output it could not write is refused before any of it runs."""
    missing_dir = tmp_path / "no-such-dir" / "results.json"
    for option, value, message in (
        ("--json", str(missing_dir), f"--json {missing_dir}: there is no directory {missing_dir.parent}"),
        ("--json", str(tmp_path), f"--json {tmp_path}: is a directory; name a file"),
        ("--plot", str(missing_dir.with_suffix(".png")), "there is no directory"),
        ("--plot", str(tmp_path / "latency.txt"), "matplotlib cannot write .txt files"),
    ):
        refused = _bench("--quick", "--scenario", "audit_export", option, value)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith("veilgate: error: ")
        assert message in refused.stderr
        assert "audit_export ..." not in refused.stderr  # nothing ran
        assert "Traceback" not in refused.stderr
    written = tmp_path / "results.json"
    result = _bench("--quick", "--scenario", "audit_export", "--json", str(written))
    assert result.returncode == 0, result.stderr
    assert "audit_export" in result.stdout  # the table still goes to the terminal
    assert json.loads(written.read_text())["scenarios"][0]["name"] == "audit_export"


@pytest.mark.parametrize(
    ("stop", "code"),
    [
        pytest.param("ctrl-c", 130, id="ctrl-c"),
        pytest.param("sigterm", 143, id="sigterm"),
        pytest.param("sigkill", -signal.SIGKILL, id="parent-killed"),
    ],
)
def test_a_stopped_run_ends_with_no_traceback_and_no_process_left(stop: str, code: int) -> None:
    """Ctrl-C reaches the whole foreground process group: the servers, the load generator and the
    parent alike. SIGTERM (``kill``, a supervisor, a CI timeout) reaches the parent alone, which must
    stop its children rather than leave them to find it gone. Either way the parent answers it
    (exit 128 + the signal); no child prints a traceback or outlives it. A parent killed outright
    (SIGKILL, the OOM killer) cannot answer: its children then stop on their own, quietly, when
    they find it gone."""
    bench = subprocess.Popen(
        [sys.executable, "-m", "veilgate_server.cli", "bench", "--quick", "--scenario", "audited_call"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as in a terminal
    )
    assert bench.stderr is not None
    lines: list[str] = []
    for line in bench.stderr:  # the progress lines, until the gateway scenario starts
        lines.append(line)
        if line.startswith("[1/1] audited_call"):
            break
    progress = "".join(lines)
    assert "[1/1] audited_call" in progress, progress  # the run did not end before its gateway scenario
    time.sleep(5)  # the gateway started and the load generator is in its measured window
    group = os.getpgid(bench.pid)
    if stop == "ctrl-c":
        os.killpg(group, signal.SIGINT)
    else:
        bench.send_signal(signal.SIGTERM if stop == "sigterm" else signal.SIGKILL)
    _, rest = bench.communicate(timeout=60)
    output = "".join(lines) + rest
    assert bench.returncode == code, output
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a process of the interrupted run outlived it")

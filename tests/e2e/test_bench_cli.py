"""`veilgate bench` as a user runs it: the JSON contract and clear errors. Speed is never asserted
here; the benchmark itself compares against a baseline taken in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veilgate_server.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
        check=False,
    )


def test_json_output_follows_the_schema() -> None:
    result = _bench("--quick", "--scenario", "ingest", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"machine", "baseline", "scenarios"}
    assert {"cpu", "cores", "python", "grpcio", "sqlite", "postgres"} <= set(report["machine"])
    [scenario] = report["scenarios"]
    assert scenario["name"] == "ingest"
    assert scenario["meets"] is None
    assert "IngestService" in scenario["skipped"]
    assert "[1/1] ingest" in result.stderr  # the progress line


def test_a_table_by_default_and_a_clear_error_for_an_unknown_scenario() -> None:
    table = _bench("--quick", "--scenario", "ingest")
    assert table.returncode == 0
    assert "scenario" in table.stdout
    assert "ingest" in table.stdout
    unknown = _bench("--scenario", "warp_speed")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("veilgate: error: unknown scenario 'warp_speed'")
    assert "Traceback" not in unknown.stderr

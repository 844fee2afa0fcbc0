"""Smoke tests of the storage-side benchmark scenarios at tiny sizes: shape and success, not speed.

Timing is never asserted (machines here are shared and noisy); what is checked is that each scenario
runs the real path to the end, reports the figures the issue names, and judges ``meets`` from them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from veilgate.audit import parse_entry
from veilgate_server.bench.reviewed import padded_catalog
from veilgate_server.bench.store_scenarios import (
    _percentile,
    bench_audit_export,
    bench_audit_verify,
    bench_log_append,
    bench_proofs,
    bench_rss,
    bulk_load,
    gateway_like_entries,
)
from veilgate_server.config import default_policies_dir
from veilgate_server.core.catalog import load_catalog
from veilgate_server.core.merkle import root_of
from veilgate_server.storage import LogWriter, Store, sqlite_url


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 50) == 50.0
    assert _percentile(values, 99) == 99.0
    assert _percentile(values, 100) == 100.0
    assert _percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError, match="no samples"):
        _percentile([], 50)


def test_entries_are_distinct_parseable_audit_entries() -> None:
    requests = gateway_like_entries(200, seed=3)
    assert len({r.entry for r in requests}) == 200
    for request in requests:
        parse_entry(request.entry)  # the SDK's strict parser accepts every one
    assert any(r.subject_citizen_id is not None for r in requests)
    assert any(r.subject_citizen_id is None for r in requests)
    assert gateway_like_entries(5, seed=3) == requests[:5]  # deterministic


def test_bulk_loader_stores_what_the_group_commit_writer_stores(tmp_path: Path) -> None:
    """The documented bulk loader and the gateway's LogWriter leave the same rows (except created_at)."""
    requests = gateway_like_entries(300, seed=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Store.open(sqlite_url(tmp_path / "a")) as bulk, Store.open(sqlite_url(tmp_path / "b")) as real:
        assert bulk_load(bulk.log, requests, batch=64) == 300
        with LogWriter(real.log) as writer:
            assert [writer.append(r) for r in requests] == list(range(300))
        tables = {}
        for name, store in (("bulk", bulk), ("real", real)):
            with store.engine.connect() as conn:
                tables[name] = [
                    conn.exec_driver_sql("SELECT idx, entry, leaf_hash FROM log_entries ORDER BY idx").all(),
                    conn.exec_driver_sql("SELECT level, idx, hash FROM log_subtrees ORDER BY level, idx").all(),
                    conn.exec_driver_sql("SELECT citizen_id, idx FROM log_subjects ORDER BY idx").all(),
                    conn.exec_driver_sql("SELECT tree_size FROM log_head").all(),
                ]
        assert tables["bulk"] == tables["real"]
        assert root_of(300, bulk.log) == root_of(300, real.log)


def test_log_append_reports_the_matrix_and_skips_an_unreachable_postgres() -> None:
    # Windows long enough that a slow commit (a shared disk) cannot leave a cell without a call.
    result = bench_log_append(True, "postgresql+psycopg://nobody@127.0.0.1:1/none", seconds=0.5, warmup=0.05)
    assert result.name == "log_append"
    sqlite = result.details["sqlite"]
    assert set(sqlite) == {"1", "16", "64"}
    for cell in sqlite.values():
        assert cell["appends"] > 0
        assert cell["errors"] == 0
        assert cell["rate"] > 0
        assert cell["mean_batch"] >= 1
        assert cell["p50_ms"] <= cell["p99_ms"]
    assert result.rate == sqlite["64"]["rate"]
    assert "not reachable" in result.details["postgresql"]["skipped"]
    assert result.details["pinned_cpu"] == min(os.sched_getaffinity(0))  # as in a pinned server process
    assert result.meets is not None
    assert "20000" in result.target


def test_proofs_reports_each_size_and_leaves_the_1m_target_unjudged() -> None:
    result = bench_proofs(True, sizes=(100, 1000), samples=20)
    assert set(result.details["sizes"]) == {"100", "1000"}
    for figures in result.details["sizes"].values():
        assert figures["inclusion"]["samples"] == 20
        assert figures["consistency"]["samples"] == 20
        assert figures["verified"] == 4
    assert result.p99_ms is not None
    assert result.p99_ms > 0
    assert result.meets is None
    assert "1M" in result.details["not_judged"]


def test_audit_verify_and_export_over_a_checkpointed_log() -> None:
    verify = bench_audit_verify(True, size=2500)
    assert verify.details["entries"] == 2500
    assert verify.details["checkpoints"] == 1
    assert verify.rate is not None
    assert verify.rate > 0
    assert verify.meets is not None
    export = bench_audit_export(True, size=2500)
    assert export.details["entries"] == 2500
    assert export.rate is not None
    assert export.rate > 0
    assert export.meets is None


def test_rss_serves_the_catalog_and_policies_of_a_policies_dir(tmp_path: Path) -> None:
    """`veilgate bench --policies-dir`: the population is seeded for that catalog and the gateway
    serves a signed copy of those policies, not the packaged ones."""
    source = tmp_path / "operator-policies"
    shutil.copytree(default_policies_dir(), source, ignore=shutil.ignore_patterns("MANIFEST"))
    shutil.rmtree(source / "credit")
    shipped = len(load_catalog(default_policies_dir() / "catalog.yaml").items)
    (source / "catalog.yaml").write_text(padded_catalog(default_policies_dir() / "catalog.yaml", shipped + 5))
    result = bench_rss(True, citizens=2, policies_dir=source)
    assert result.details["policies"] == str(source)
    assert result.details["sample_citizen_items"] == shipped + 5
    assert result.details["policies_served"] == len(list(source.glob("*/*/v*/policy.yaml"))) == 2
    assert not (source / "MANIFEST").exists()  # the copy was signed, not the operator's directory


def test_rss_measures_a_fresh_serving_process() -> None:
    result = bench_rss(True, citizens=3)
    assert result.details["citizens"] == 3
    assert result.details["records"] > 0
    assert 10 < result.details["rss_mb"] < 2000
    # The process served what was seeded, under the signed copy of every packaged policy.
    assert result.details["records_visible"] == result.details["records"]
    assert result.details["sample_citizen_items"] == len(load_catalog(default_policies_dir() / "catalog.yaml").items)
    assert result.details["policies_served"] == len(list(default_policies_dir().glob("*/*/v*/policy.yaml")))
    assert result.meets is None
    assert "100k" in result.details["not_judged"]

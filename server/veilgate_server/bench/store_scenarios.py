"""The storage side of ``veilgate bench``: the audit log's appends, proofs, audit, and server memory.

Every scenario here runs on a real :class:`~veilgate_server.storage.Store` with the gateway's own
settings (SQLite in WAL mode with ``synchronous=FULL``; PostgreSQL through psycopg), through the same
code the gateway runs, and returns one :class:`ScenarioResult` judged against the issue's target:

* :func:`bench_log_append` -- durable appends/s through :class:`LogWriter` (group commit; a caller
  returns only after the transaction holding its entry has committed) at 1, 16 and 64 writer threads,
  on SQLite and, when reachable, PostgreSQL. One result, ``log_append``; its ``rate``, ``p50_ms`` and
  ``p99_ms`` are SQLite at 64 writers (the target's cell), the whole matrix is in ``details``.
* :func:`bench_proofs` -- inclusion and consistency proof latency, DB reads included, at 10k and 100k
  entries (and 1M in the full run).
* :func:`bench_audit_verify`, :func:`bench_audit_export` -- entries/s of ``veilgate audit verify`` and
  ``export`` over a log with a signed checkpoint every 10k entries.
* :func:`bench_rss` -- resident memory of a fresh serving process after a seeded population.

Large logs are built by :func:`bulk_load`, which is :meth:`AuditLog.append_batch` -- the real append
path, the one :class:`LogWriter` calls -- with large batches: the stored rows (entries, leaf hashes,
subtree hashes, subject index) are the ones the gateway would have written, only in fewer transactions.
Entries are real audit entries (:func:`veilgate.audit.entry_bytes`, 200 to 550 bytes, ~385 on average;
three in four about a citizen, with a subject tag and a subject index row), from :func:`gateway_like_entries`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from veilgate.audit import AuditEntry, LogVerifier, entry_bytes, sha256_b64, subject_tag
from veilgate.errors import VeilgateError
from veilgate.merkle import leaf_hash, verify_consistency, verify_inclusion
from veilgate_server.audit import Checkpointer
from veilgate_server.audit_tools import default_workers, export_log, verify_log
from veilgate_server.bench.results import ScenarioResult, Target
from veilgate_server.bench.reviewed import reviewed_policies
from veilgate_server.core.merkle import consistency_proof, inclusion_proof, root_of
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.rpc.processes import cpus_for, pinned_to
from veilgate_server.storage import AppendRequest, AuditLog, LogWriter, Store, sqlite_url
from veilgate_server.storage.db import create_engine_for

__all__ = [
    "bench_audit_export",
    "bench_audit_verify",
    "bench_log_append",
    "bench_proofs",
    "bench_rss",
    "bulk_load",
    "gateway_like_entries",
    "postgres_schema",
]

WRITER_COUNTS: Final = (1, 16, 64)
BULK_BATCH: Final = 8192
CHECKPOINT_EVERY: Final = 10_000

LOG_APPEND_TARGET: Final = Target("rate", ">=", 20_000, ">= 20000 durable appends/s on SQLite at 64 writers")
INCLUSION_TARGET: Final = Target("inclusion_p99_ms_1m", "<=", 2.0, "inclusion proof p99 <= 2 ms at 1M entries")
CONSISTENCY_TARGET: Final = Target("consistency_p99_ms_1m", "<=", 2.0, "consistency proof p99 <= 2 ms at 1M entries")
VERIFY_TARGET: Final = Target(
    "rate", ">=", 100_000, "verify 1M entries in <= 10 s, judged as >= 100000 entries/s on the log measured"
)
RSS_TARGET: Final = Target("rss_mb_at_100k", "<=", 300, "serving process RSS <= 300 MB at 100k citizens")

_METHODS: Final = (
    ("/veilgate.v1.EligibilityService/Evaluate", "institution"),
    ("/veilgate.v1.CitizenService/GetMyData", "citizen"),
    ("/veilgate.v1.CitizenService/RegisterConsent", "citizen"),
    ("/veilgate.v1.AuditService/GetCheckpoint", "public"),
)


# --- entries and the bulk loader ------------------------------------------------------------------


def gateway_like_entries(count: int, *, seed: int = 0, subjects: int = 1000) -> list[AppendRequest]:
    """``count`` distinct audit entries shaped like the gateway's (deterministic for a ``seed``).

    Evaluate and citizen calls are about a citizen (one of ``subjects``): they carry a fresh nonce and
    the HMAC tag under that citizen's log key, and a ``subject_citizen_id`` for the private index,
    exactly as :meth:`veilgate_server.audit.Auditor.entry_for` makes them.
    """
    rng = random.Random(seed)
    keys = [rng.randbytes(32) for _ in range(max(1, subjects))]
    base = 1_780_000_000.0
    requests: list[AppendRequest] = []
    for i in range(count):
        method, kind = _METHODS[i % len(_METHODS)]
        seconds = base + i / 1000
        stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{i % 1000:03d}Z"
        subject = rng.randrange(len(keys)) if kind != "public" else None
        nonce = rng.randbytes(16) if subject is not None else None
        evaluate = kind == "institution"
        entry = AuditEntry(
            time=stamp,
            method=method,
            caller_kind=kind,
            caller_id="bank-0042" if evaluate else None,
            code="OK",
            reason="",
            request=sha256_b64(rng.randbytes(32)),
            subject_nonce=nonce,
            subject_tag=subject_tag(keys[subject], nonce) if subject is not None and nonce is not None else None,
            policy_id="credit.personal_loan" if evaluate else None,
            policy_sha256=rng.randbytes(32).hex() if evaluate else None,
            consent=f"cns_{rng.randbytes(12).hex()}" if evaluate else None,
            decision="ELIGIBLE" if evaluate else None,
            result=sha256_b64(rng.randbytes(32)) if kind != "public" else None,
            watermark=f"wm_{rng.randbytes(12).hex()}" if kind == "citizen" else None,
        )
        citizen = f"3701{subject:014d}" if subject is not None else None
        requests.append(AppendRequest(entry=entry_bytes(entry), subject_citizen_id=citizen))
    return requests


def bulk_load(log: AuditLog, requests: Iterable[AppendRequest], *, batch: int = BULK_BATCH) -> int:
    """Append ``requests`` through :meth:`AuditLog.append_batch`, ``batch`` entries per transaction.

    This *is* the real append path (what :class:`LogWriter` calls for each group commit), so the rows
    stored are the gateway's: only the transaction boundaries (and ``created_at`` values) differ from a
    log grown call by call. Returns the number of entries appended.
    """
    pending: list[AppendRequest] = []
    appended = 0
    for request in requests:
        pending.append(request)
        if len(pending) >= batch:
            appended += len(log.append_batch(pending))
            pending = []
    if pending:
        appended += len(log.append_batch(pending))
    return appended


def _entry_stream(count: int, *, seed: int, chunk: int = 20_000) -> Iterator[AppendRequest]:
    """Distinct entries without holding ``count`` of them in memory at once."""
    made = 0
    while made < count:
        n = min(chunk, count - made)
        yield from gateway_like_entries(n, seed=seed + made)
        made += n


# --- statistics -----------------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of an ascending sequence."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100), at least 1
    return sorted_values[int(rank) - 1]


def _latency_ms(samples_seconds: Iterable[float]) -> dict[str, float]:
    ordered = sorted(samples_seconds)
    return {
        "p50_ms": round(_percentile(ordered, 50) * 1000, 4),
        "p99_ms": round(_percentile(ordered, 99) * 1000, 4),
        "samples": len(ordered),
    }


# --- databases ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_store(directory: Path | None = None) -> Iterator[Store]:
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="veilgate-bench-")))
        store = Store.open(sqlite_url(directory))
        stack.callback(store.close)
        yield store


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema on the server at ``base_url``, selected through the URL; dropped afterwards."""
    schema = f"vg_bench_{secrets.token_hex(6)}"
    parsed = make_url(base_url)
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": "3"})
    admin = create_engine_for(parsed.render_as_string(hide_password=False))
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            yield parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
        finally:
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


def _postgres_unreachable(base_url: str | None) -> str | None:
    if not base_url:
        return "no PostgreSQL URL given (veilgate bench passes none when its server is unreachable)"
    parsed = make_url(base_url)
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": "3"})
    try:
        engine = create_engine_for(parsed.render_as_string(hide_password=False))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except (VeilgateError, SQLAlchemyError) as e:
        return f"PostgreSQL not reachable at {parsed.host}:{parsed.port}: {type(e).__name__}"
    return None


# --- log_append -----------------------------------------------------------------------------------


def _append_cell(
    store: Store, requests: Sequence[AppendRequest], *, writers: int, warmup: float, seconds: float
) -> dict[str, Any]:
    """``writers`` closed-loop threads appending through one LogWriter (the gateway's settings).

    The warm-up starts once every thread runs (starting 64 threads that contend for the GIL on one
    CPU can take longer than a short warm-up). Calls that start in the measured window count; the
    window ends when the last of them returns.
    """
    writer = LogWriter(store.log)
    latencies: list[list[float]] = [[] for _ in range(writers)]
    ends = [0.0] * writers
    errors = [0] * writers
    edges: list[float] = []  # the measured window's start and stop, set when the last thread is ready

    def set_edges() -> None:
        start = time.perf_counter() + warmup
        edges.extend((start, start + seconds))

    ready = threading.Barrier(writers + 1, action=set_edges)

    def run(k: int) -> None:
        ready.wait()
        start, stop = edges
        mine = latencies[k]
        i = k
        n = len(requests)
        while True:
            t0 = time.perf_counter()
            if t0 >= stop:
                return
            try:
                writer.append(requests[i % n])
            except VeilgateError:
                errors[k] += 1
                continue
            t1 = time.perf_counter()
            if t0 >= start:
                mine.append(t1 - t0)
                ends[k] = t1
            i += writers

    with writer:
        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(writers)]
        for thread in threads:
            thread.start()
        ready.wait()
        start = edges[0]
        time.sleep(max(0.0, start - time.perf_counter()))
        before = writer.stats
        for thread in threads:
            thread.join()
        after = writer.stats
    calls = sum(len(x) for x in latencies)
    window = max(ends) - start if calls else 0.0
    batches = after.batches - before.batches
    return {
        "rate": round(calls / window, 1) if window > 0 else 0.0,
        "appends": calls,
        "seconds": round(window, 3),
        "mean_batch": round((after.entries - before.entries) / batches, 2) if batches else 0.0,
        "errors": sum(errors),
        **(_latency_ms(x for lat in latencies for x in lat) if calls else {}),
    }


def _append_matrix(url: str, requests: Sequence[AppendRequest], *, warmup: float, seconds: float) -> dict[str, Any]:
    store = Store.open(url)
    try:
        return {
            str(writers): _append_cell(store, requests, writers=writers, warmup=warmup, seconds=seconds)
            for writers in WRITER_COUNTS
        }
    finally:
        store.close()


def bench_log_append(
    quick: bool,
    postgres_url: str | None,
    *,
    seconds: float | None = None,
    warmup: float | None = None,
    pin: bool = True,
) -> ScenarioResult:
    """Durable appends/s through the group-commit writer at 1, 16 and 64 writer threads.

    ``details["sqlite"|"postgresql"][writers]`` holds rate, mean batch size and p50/p99 append latency
    (enqueue to commit acknowledged); the scenario's figures are SQLite at 64 writers. PostgreSQL runs
    in a schema of its own at ``postgres_url`` (dropped afterwards), or is skipped with the reason.
    Each cell warms up for ``warmup`` seconds, then measures for ``seconds`` (quick: 0.3 + 1 s;
    full: 1 + 5 s). With ``pin``, the writers and the log writer run on one CPU, as they do in a
    server process of ``veilgate serve --processes`` (``details["pinned_cpu"]``).
    """
    warmup = (0.3 if quick else 1.0) if warmup is None else warmup
    seconds = (1.0 if quick else 5.0) if seconds is None else seconds
    requests = gateway_like_entries(8192, seed=1)
    details: dict[str, Any] = {
        "writer": "LogWriter defaults (max_batch=256, linger 0.5 ms), as build_server runs it",
        "entry_bytes_mean": round(sum(len(r.entry) for r in requests) / len(requests), 1),
        "window_seconds": seconds,
    }
    cpus = cpus_for(1) if pin else None
    details["pinned_cpu"] = cpus[0] if cpus else None
    with pinned_to(cpus[0]) if cpus else contextlib.nullcontext():
        with tempfile.TemporaryDirectory(prefix="veilgate-bench-") as tmp:
            details["sqlite"] = _append_matrix(sqlite_url(Path(tmp)), requests, warmup=warmup, seconds=seconds)
        reason = _postgres_unreachable(postgres_url)
        if reason is None and postgres_url is not None:
            with postgres_schema(postgres_url) as url:
                details["postgresql"] = _append_matrix(url, requests, warmup=warmup, seconds=seconds)
        else:
            details["postgresql"] = {"skipped": reason}
    at64 = details["sqlite"][str(WRITER_COUNTS[-1])]
    result = ScenarioResult(
        name="log_append", rate=at64["rate"], p50_ms=at64.get("p50_ms"), p99_ms=at64.get("p99_ms"), details=details
    )
    return result.judge(LOG_APPEND_TARGET)


# --- proofs ---------------------------------------------------------------------------------------


def _time_proofs(log: AuditLog, size: int, *, samples: int, rng: random.Random) -> dict[str, Any]:
    """Time proofs against the tree of ``size`` leaves from the store (DB reads included); verify a
    tenth of them against the root recomputed from the stored subtrees."""
    root = root_of(size, log)
    for _ in range(20):  # warm the connection pool and the statement caches
        inclusion_proof(rng.randrange(size), size, log)
    inclusion: list[float] = []
    consistency: list[float] = []
    verified = 0
    for n in range(samples):
        index = rng.randrange(size)
        t0 = time.perf_counter()
        proof = inclusion_proof(index, size, log)
        inclusion.append(time.perf_counter() - t0)
        first = rng.randrange(1, size)
        t0 = time.perf_counter()
        cproof = consistency_proof(first, size, log)
        consistency.append(time.perf_counter() - t0)
        if n % 10 == 0:
            [entry] = log.entries(index, 1)
            verify_inclusion(leaf_hash=leaf_hash(entry.entry), index=index, tree_size=size, proof=proof, root=root)
            verify_consistency(
                first_size=first, second_size=size, first_root=root_of(first, log), second_root=root, proof=cproof
            )
            verified += 2
    return {"inclusion": _latency_ms(inclusion), "consistency": _latency_ms(consistency), "verified": verified}


def bench_proofs(quick: bool, *, sizes: Sequence[int] | None = None, samples: int | None = None) -> ScenarioResult:
    """Inclusion and consistency proof latency at 10k and 100k entries, and 1M in the full run.

    One SQLite log grows through :func:`bulk_load` to each size in turn; at each, random leaves (and
    random older sizes) are proved against the current size. The target is at 1M entries: a quick run
    does not build 1M, so it reports its largest size and leaves ``meets`` unset (None), saying why.
    ``p50_ms``/``p99_ms`` are the slower of the two proof kinds at the largest size measured.
    """
    if sizes is None:
        sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    samples = samples or (300 if quick else 500)
    rng = random.Random(7)
    measured: dict[str, Any] = {}
    build_seconds = 0.0
    with _sqlite_store() as store:
        grown = 0
        for size in sorted(sizes):
            t0 = time.perf_counter()
            grown += bulk_load(store.log, _entry_stream(size - grown, seed=grown))
            build_seconds += time.perf_counter() - t0
            measured[str(size)] = _time_proofs(store.log, size, samples=samples, rng=rng)
    largest = measured[str(max(sizes))]
    at_1m = measured.get("1000000")
    details: dict[str, Any] = {
        "sizes": measured,
        "backend": "sqlite",
        "loader": f"bulk_load: AuditLog.append_batch in batches of {BULK_BATCH} (the real append path)",
        "build_entries_per_s": round(max(sizes) / build_seconds, 1) if build_seconds else None,
    }
    if at_1m is None:
        details["not_judged"] = f"the targets are at 1M entries; this run measured up to {max(sizes)} (quick run)"
    result = ScenarioResult(
        name="proofs",
        p50_ms=max(largest["inclusion"]["p50_ms"], largest["consistency"]["p50_ms"]),
        p99_ms=max(largest["inclusion"]["p99_ms"], largest["consistency"]["p99_ms"]),
        details=details,
    )
    return result.judge(
        INCLUSION_TARGET,
        CONSISTENCY_TARGET,
        extra={
            "inclusion_p99_ms_1m": at_1m["inclusion"]["p99_ms"] if at_1m else None,
            "consistency_p99_ms_1m": at_1m["consistency"]["p99_ms"] if at_1m else None,
        },
    )


# --- audit verify and export ----------------------------------------------------------------------


@dataclass
class _CheckpointedLog:
    store: Store
    checkpointer: Checkpointer
    build_seconds: float


@contextlib.contextmanager
def _checkpointed_log(size: int) -> Iterator[_CheckpointedLog]:
    """A SQLite log of ``size`` entries with a checkpoint signed (by the real Checkpointer) every
    :data:`CHECKPOINT_EVERY` entries, as a gateway under steady load would leave it."""
    with _sqlite_store() as store:
        checkpointer = Checkpointer(store, NoteSigner.generate("bench.veilgate/log"))
        t0 = time.perf_counter()
        grown = 0
        while grown < size:
            chunk = min(CHECKPOINT_EVERY, size - grown)
            grown += bulk_load(store.log, _entry_stream(chunk, seed=grown))
            checkpointer.sign_latest()
        yield _CheckpointedLog(store, checkpointer, time.perf_counter() - t0)


def bench_audit_verify(quick: bool, *, size: int | None = None) -> ScenarioResult:
    """Entries/s of ``verify_log`` (rehash every entry, check every stored subtree and checkpoint),
    with as many processes as ``veilgate audit verify`` uses by default: one per CPU."""
    size = size or (100_000 if quick else 1_000_000)
    with _checkpointed_log(size) as built:
        verifier = LogVerifier(built.checkpointer.verifier_key)
        t0 = time.perf_counter()
        summary = verify_log(built.store, verifier, workers=default_workers())
        seconds = time.perf_counter() - t0
    result = ScenarioResult(
        name="audit_verify",
        rate=round(summary.entries / seconds, 1),
        details={
            "entries": summary.entries,
            "checkpoints": summary.checkpoints,
            "subtrees": summary.subtrees,
            "workers": summary.workers,
            "pieces": summary.pieces,
            "seconds": round(seconds, 3),
            "projected_seconds_for_1m": round(1_000_000 * seconds / summary.entries, 2),
            "backend": "sqlite",
            "build_seconds": round(built.build_seconds, 2),
        },
    )
    return result.judge(VERIFY_TARGET)


def bench_audit_export(quick: bool, *, size: int | None = None) -> ScenarioResult:
    """Entries/s of ``export_log`` (entries.jsonl with fsync, checkpoint, key). The issue sets no
    target for export: it is reported only, and ``meets`` stays None."""
    size = size or (100_000 if quick else 1_000_000)
    with _checkpointed_log(size) as built, tempfile.TemporaryDirectory(prefix="veilgate-export-") as out:
        t0 = time.perf_counter()
        summary = export_log(built.store, built.checkpointer, Path(out))
        seconds = time.perf_counter() - t0
        exported_bytes = (Path(out) / "entries.jsonl").stat().st_size
    return ScenarioResult(
        name="audit_export",
        rate=round(summary.entries / seconds, 1),
        target="none set by the issue (reported only)",
        details={
            "entries": summary.entries,
            "seconds": round(seconds, 3),
            "jsonl_bytes": exported_bytes,
            "backend": "sqlite",
            "build_seconds": round(built.build_seconds, 2),
        },
    )


# --- rss ------------------------------------------------------------------------------------------


def _read_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _seed_child(data_dir: str, citizens: int, policies_dir: str | None, reply: Connection) -> None:
    """Process body: seed ``citizens`` into the data directory's store, with a record of every item
    of the catalog in ``policies_dir`` (None: the packaged one), then exit, freeing it all."""
    from veilgate_server.admin import seed_population
    from veilgate_server.config import Settings

    settings = Settings(data_dir=Path(data_dir), policies_dir=Path(policies_dir) if policies_dir else None)
    store = settings.open_store()
    try:
        summary = seed_population(store, settings.load_catalog(), citizens=citizens, seed=20)
    finally:
        store.close()
    reply.send({"citizens": summary.citizens, "records": summary.records, "sample": summary.sample_ids[0]})
    reply.close()


def _serve_child(data_dir: str, policies_dir: str, governance_key: str, sample_citizen: str, reply: Connection) -> None:
    """Process body: start a gateway as ``veilgate serve`` does (:func:`~veilgate_server.serving.serve`:
    the signed manifest checked, the store, keys, TLS and mutual-TLS ports, the log writer and the
    checkpointer), touch what the first requests read, report its RSS, stop."""
    from veilgate_server.config import Settings
    from veilgate_server.crypto import ensure_local_tls
    from veilgate_server.serving import ServeOptions, serve, server_tls

    now = datetime.now(UTC)
    settings = Settings(data_dir=Path(data_dir), policies_dir=Path(policies_dir), governance_keys=(governance_key,))
    tls = server_tls(settings, ensure_local_tls(settings.tls_dir, now=now)[0], now=now)
    gateway, running = serve(settings, ServeOptions(address="127.0.0.1:0", tls=tls, mtls_address="127.0.0.1:0"))
    try:
        # What the first requests touch: the population's size and one citizen's records.
        records = gateway.store.records.count()
        items = len(gateway.store.records.for_citizen(sample_citizen))
        reply.send(
            {
                "rss_kb": _read_status_kb("VmRSS"),
                "hwm_kb": _read_status_kb("VmHWM"),
                "records_visible": records,
                "sample_items": items,
                "policies": len(gateway.policies),
            }
        )
    finally:
        running.stop(grace=None)
        gateway.store.close()
        reply.close()


def _in_child(target: Any, *args: Any, timeout: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(*args, send), daemon=True)
    process.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise RuntimeError(f"{target.__name__} did not report within {timeout:.0f} s")
        answer: dict[str, Any] = receive.recv()
    except BaseException:  # failed or interrupted: nothing more is wanted from the child
        process.kill()
        raise
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
        receive.close()
    return answer


def bench_rss(quick: bool, *, citizens: int | None = None, policies_dir: Path | None = None) -> ScenarioResult:
    """Resident memory of a serving gateway process after seeding a population.

    A spawned child seeds the population into a SQLite store (every catalog item per citizen) and
    exits; a second, fresh spawned child then starts the gateway as ``veilgate serve`` does, under a
    copy of the packaged policies (or of ``policies_dir``) signed by a throwaway governance key
    (store, catalog, policies, keys, TLS and mTLS ports, log writer, checkpointer), touches the data
    the first requests read, and reports ``VmRSS`` from ``/proc/self/status``. The full run seeds
    100k citizens; the quick run seeds 10k and reports that, leaving ``meets`` None (the target is at
    100k; nothing is extrapolated).
    """
    citizens = citizens or (10_000 if quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="veilgate-bench-rss-") as tmp:
        t0 = time.perf_counter()
        source = str(policies_dir) if policies_dir else None
        seeded = _in_child(_seed_child, tmp, citizens, source, timeout=3600)
        seed_seconds = time.perf_counter() - t0
        reviewed, governance_key = reviewed_policies(Path(tmp), pad_to=None, source=policies_dir)
        served = _in_child(_serve_child, tmp, str(reviewed), governance_key, seeded["sample"], timeout=300)
        db_bytes = sum(p.stat().st_size for p in Path(tmp).glob("veilgate.db*"))
    rss_mb = round(served["rss_kb"] / 1024, 1)
    details: dict[str, Any] = {
        "citizens": seeded["citizens"],
        "records": seeded["records"],
        "rss_mb": rss_mb,
        "peak_rss_mb": round(served["hwm_kb"] / 1024, 1),
        "db_mb": round(db_bytes / 2**20, 1),
        "seed_seconds": round(seed_seconds, 1),
        "records_visible": served["records_visible"],
        "sample_citizen_items": served["sample_items"],
        "policies_served": served["policies"],
        "policies": str(policies_dir) if policies_dir else "packaged",
        "backend": "sqlite",
        "measured": "a fresh spawned process, started like `veilgate serve`, after the seeder exited",
    }
    if citizens < 100_000:
        details["not_judged"] = f"the target is at 100k citizens; this run seeded {citizens} (quick run)"
    result = ScenarioResult(name="rss", details=details)
    return result.judge(RSS_TARGET, extra={"rss_mb_at_100k": rss_mb if citizens >= 100_000 else None})

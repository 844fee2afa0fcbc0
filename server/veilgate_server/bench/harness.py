"""The load generator and the bare-grpcio baseline it is compared with.

One harness drives every RPC measurement, baseline and gateway alike, so a ratio between two runs
compares servers and nothing else:

* the server (a :class:`BareServer`, or the gateway) runs in one or more server processes
  (:class:`~veilgate_server.bench.processes.ServerProcesses`); the load runs in a **separate
  process** started with ``spawn`` (on two cores, client and server must not share one interpreter
  and its GIL);
* the load generator opens **one** channel, balanced round robin over the server processes' ports
  (one connection each), and keeps a fixed number of blocking unary calls in flight (``concurrency``
  threads, each calling in a loop), discards a warm-up, then records the latency of every call that
  completes in the measured window;
* the child reports when the measured window opens and closes over a pipe; at those two moments the
  parent samples the servers' CPU time (user + system, all threads, summed over the server processes),
  so ``cpu_us_per_call`` is the servers' CPU over the window divided by the calls completed in it,
  and ``switches_per_call`` their voluntary context switches (``getrusage``) likewise: each is a
  thread that blocked, mostly to hand the GIL over, which costs the whole process a wake-up.

Requests are built in the child, where a real client would build them: a GetMyData caller signs a
fresh single-use request token per call with the citizen's wallet; an Evaluate caller sends a unique
``request_id`` per call and rotates through consents issued beforehand so that none is used more
often than it allows; a department pushes batches of records made beforehand. A :class:`Workload`
says how; it is pickled into the child.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import grpc

from veilgate import CitizenWallet, verify_result
from veilgate.citizen import GET_MY_DATA
from veilgate.delivery import GatewayKey
from veilgate.errors import InternalError
from veilgate.v1 import (
    citizen_pb2,
    citizen_pb2_grpc,
    eligibility_pb2,
    eligibility_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
)
from veilgate_server.bench.results import LatencyStats
from veilgate_server.rpc.processes import Started, end_process, start_shielded

__all__ = [
    "BARE_METHOD",
    "BareServer",
    "ClientTls",
    "EvaluateWorkload",
    "GatewayInfoWorkload",
    "GetMyDataWorkload",
    "IngestWorkload",
    "LoadResult",
    "LoadSpec",
    "NoopWorkload",
    "Workload",
    "latency_stats",
    "percentile",
    "run_load",
]

BARE_METHOD = "/veilgate.bench.Bare/Noop"
SERVER_WORKERS = 8
CallFn = Callable[[int], None]


# --- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``: the smallest value with at
    least ``q`` % of the values at or below it. Nearest rank never interpolates, so a reported p99 is
    a latency some call really had."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def latency_stats(latencies_s: Sequence[float], *, seconds: float, errors: int = 0) -> LatencyStats:
    """Calls, window length and p50/p99 (in ms) of the latencies (in seconds) measured in a window."""
    if not latencies_s:
        return LatencyStats(calls=0, seconds=seconds, p50_ms=0.0, p99_ms=0.0, errors=errors)
    ordered = sorted(latencies_s)
    return LatencyStats(
        calls=len(ordered),
        seconds=seconds,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        errors=errors,
    )


# --- the baseline server --------------------------------------------------------------------------


def _noop(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


@dataclass(frozen=True, slots=True)
class BareServer:
    """A bare grpcio unary no-op: the same sync ``grpc.server``, pool size, options and certificates
    as the gateway, with a generic handler taking and returning raw bytes (no protobuf, no
    interceptors). Listens twice like the gateway: TLS, and mutual TLS requiring a client certificate
    from ``client_ca``. Started in a server process (see :mod:`veilgate_server.bench.processes`)."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes
    workers: int = SERVER_WORKERS

    def start(self, index: int) -> Started:
        # Imported here so the load generator's process does not load the whole gateway.
        from veilgate_server.rpc.server import TRANSPORT_LIMIT_BYTES

        handler = grpc.method_handlers_generic_handler(
            BARE_METHOD.split("/")[1], {BARE_METHOD.split("/")[2]: grpc.unary_unary_rpc_method_handler(_noop)}
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="bench-bare"),
            handlers=[handler],
            options=[("grpc.max_receive_message_length", TRANSPORT_LIMIT_BYTES), ("grpc.so_reuseport", 0)],
        )
        pair = [(self.private_key, self.certificate_chain)]
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(pair))
        mtls_port = server.add_secure_port(
            "127.0.0.1:0",
            grpc.ssl_server_credentials(pair, root_certificates=self.client_ca, require_client_auth=True),
        )
        if not (port and mtls_port):
            raise InternalError("the bare baseline server could not listen on 127.0.0.1")
        server.start()

        def stop() -> None:
            server.stop(None).wait()

        return Started(tls_port=port, mtls_port=mtls_port, stop=stop)


# --- workloads: how the child builds and sends one call --------------------------------------------


class Workload(Protocol):
    """What one call is. Instances are pickled into the load generator and opened there."""

    @property
    def name(self) -> str: ...

    def open(self, channel: grpc.Channel) -> CallFn:
        """A function making call number ``n`` (0, 1, ...): raises on any failure, returns nothing."""
        ...

    def probe(self, channel: grpc.Channel, n: int) -> dict[str, Any]:
        """One fully checked call made before the load (reply opened or verified); facts for the report."""
        ...


class CallFailed(Exception):
    """A call that returned but not what it should (or could not be built)."""


@dataclass(frozen=True, slots=True)
class NoopWorkload:
    """The bare server's no-op: empty bytes in, empty bytes out."""

    name: str = "noop"

    def open(self, channel: grpc.Channel) -> CallFn:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(BARE_METHOD)  # bytes in and out

        def noop(n: int) -> None:
            call(b"", timeout=10.0)

        return noop

    def probe(self, channel: grpc.Channel, n: int) -> dict[str, Any]:
        self.open(channel)(n)
        return {}


@dataclass(frozen=True, slots=True)
class EvaluateWorkload:
    """An institution's Evaluate calls: a unique ``request_id`` per call, consents used round-robin.

    Call ``n`` uses consent ``n % len(consent_tokens)``, so no consent sees more than ``max_uses``
    calls until ``len(consent_tokens) * max_uses`` calls were made; after that the caller fails
    rather than spend a consent twice over (the gateway would refuse it anyway)."""

    policy_id: str
    parameters: Mapping[str, str]
    consent_tokens: tuple[str, ...]
    max_uses: int
    institution_id: str
    gateway_keys: tuple[GatewayKey, ...]  # for the probe's offline verification
    run_tag: str = "bench"
    name: str = "evaluate"

    def _request(self, n: int) -> eligibility_pb2.EvaluateRequest:
        if n >= len(self.consent_tokens) * self.max_uses:
            raise CallFailed(f"ran out of consents after {n} calls: issue more before the run")
        return eligibility_pb2.EvaluateRequest(
            policy_id=self.policy_id,
            consent_token=self.consent_tokens[n % len(self.consent_tokens)],
            request_id=f"{self.run_tag}-{n:010d}",
            parameters=dict(self.parameters),
        )

    def open(self, channel: grpc.Channel) -> CallFn:
        stub = eligibility_pb2_grpc.EligibilityServiceStub(channel)

        def evaluate(n: int) -> None:
            if not stub.Evaluate(self._request(n), timeout=10.0).signed_result:
                raise CallFailed("Evaluate returned no signed result")

        return evaluate

    def probe(self, channel: grpc.Channel, n: int) -> dict[str, Any]:
        reply = eligibility_pb2_grpc.EligibilityServiceStub(channel).Evaluate(self._request(n), timeout=10.0)
        result = verify_result(reply.signed_result, gateway_keys=self.gateway_keys, institution_id=self.institution_id)
        return {"decision": result.decision, "bands": dict(result.bands), "result_bytes": len(reply.signed_result)}


@dataclass(frozen=True, slots=True)
class GatewayInfoWorkload:
    """GetGatewayInfo over TLS: the cheapest call the gateway audits. It does no work of its own,
    so it measures what every call pays: the interceptors and the durable log append."""

    gateway_id: str
    name: str = "audited_call"

    def open(self, channel: grpc.Channel) -> CallFn:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)

        def info(n: int) -> None:
            if stub.GetGatewayInfo(citizen_pb2.GetGatewayInfoRequest(), timeout=10.0).gateway_id != self.gateway_id:
                raise CallFailed("GetGatewayInfo named another gateway")

        return info

    def probe(self, channel: grpc.Channel, n: int) -> dict[str, Any]:
        reply = citizen_pb2_grpc.CitizenServiceStub(channel).GetGatewayInfo(
            citizen_pb2.GetGatewayInfoRequest(), timeout=10.0
        )
        return {"gateway_id": reply.gateway_id}


@dataclass(frozen=True, slots=True)
class GetMyDataWorkload:
    """A citizen's GetMyData calls, each with a fresh single-use request token signed in the child by
    the citizen's wallet (loaded from its passphrase-protected file, as a wallet app would)."""

    wallet_path: str
    passphrase: str
    gateway_id: str
    gateway_keys: tuple[GatewayKey, ...]
    name: str = "get_my_data"

    def _wallet(self) -> CitizenWallet:
        return CitizenWallet.load(Path(self.wallet_path), self.passphrase)

    def open(self, channel: grpc.Channel) -> CallFn:
        stub = citizen_pb2_grpc.CitizenServiceStub(channel)
        wallet = self._wallet()

        def get_my_data(n: int) -> None:
            token = wallet.request_token(audience=self.gateway_id, operation=GET_MY_DATA)
            if not stub.GetMyData(citizen_pb2.GetMyDataRequest(request_token=token), timeout=10.0).sealed_delivery:
                raise CallFailed("GetMyData returned no sealed delivery")

        return get_my_data

    def probe(self, channel: grpc.Channel, n: int) -> dict[str, Any]:
        wallet = self._wallet()
        token = wallet.request_token(audience=self.gateway_id, operation=GET_MY_DATA)
        reply = citizen_pb2_grpc.CitizenServiceStub(channel).GetMyData(
            citizen_pb2.GetMyDataRequest(request_token=token), timeout=10.0
        )
        delivery = wallet.open_delivery(reply.sealed_delivery, gateway_keys=self.gateway_keys, request_token=token)
        return {"items": len(delivery.items), "sealed_bytes": len(reply.sealed_delivery)}


@dataclass(frozen=True, slots=True)
class IngestWorkload:
    """A department's pushes: call ``n`` sends batch ``n % len(batches)``, every record dated
    ``as_of``. A record with the date it is stored with replaces it, so every push of every round
    is applied in full (the first round inserts, and makes each citizen's data key; later rounds
    replace), and a push that stores fewer than all of its records fails the call.

    Each batch is ``(citizen_id, item_id, value_json)`` triples; their messages are built once,
    when the child opens the channel, as a department's feed would have them ready."""

    batches: tuple[tuple[tuple[str, str, str], ...], ...]
    as_of: str
    name: str = "ingest"

    def _requests(self) -> list[ingest_pb2.PushRecordsRequest]:
        return [
            ingest_pb2.PushRecordsRequest(
                records=[
                    ingest_pb2.PushedRecord(citizen_id=c, item_id=i, as_of=self.as_of, value_json=v)
                    for c, i, v in batch
                ]
            )
            for batch in self.batches
        ]

    def open(self, channel: grpc.Channel) -> CallFn:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        requests = self._requests()

        def push(n: int) -> None:
            request = requests[n % len(requests)]
            reply = stub.PushRecords(request, timeout=30.0)
            if reply.stored != len(request.records):
                raise CallFailed(f"a push stored {reply.stored} of its {len(request.records)} records")

        return push

    def probe(self, channel: grpc.Channel, n: int) -> dict[str, Any]:
        request = self._requests()[n % len(self.batches)]
        reply = ingest_pb2_grpc.IngestServiceStub(channel).PushRecords(request, timeout=30.0)
        return {"stored": reply.stored, "stale": len(reply.stale), "request_bytes": request.ByteSize()}


# --- the load generator ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What the load generator trusts, and (for mutual TLS) the client certificate it presents."""

    root_certificates: bytes
    certificate_chain: bytes | None = None
    private_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One run of the load generator (picklable: it crosses into the child process)."""

    target: str
    tls: ClientTls
    workload: Workload
    concurrency: int = 16
    warmup_seconds: float = 1.0
    measured_seconds: float = 4.0


@dataclass(frozen=True, slots=True)
class _ChildReport:
    latencies_s: list[float]
    seconds: float
    window_errors: int
    total_calls: int
    total_errors: int
    first_error: str | None
    probe: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The measured window as the client saw it, and the server's CPU over the same window."""

    stats: LatencyStats
    cpu_us_per_call: float | None
    switches_per_call: float | None
    total_calls: int
    total_errors: int
    first_error: str | None
    probe: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """JSON-ready figures (the shape of each half of the ``baseline`` section)."""
        return {
            "qps": round(self.stats.qps, 1),
            "p50_ms": round(self.stats.p50_ms, 3),
            "p99_ms": round(self.stats.p99_ms, 3),
            "calls": self.stats.calls,
            "seconds": round(self.stats.seconds, 3),
            "errors": self.total_errors,
            "cpu_us_per_call": None if self.cpu_us_per_call is None else round(self.cpu_us_per_call, 1),
            "switches_per_call": None if self.switches_per_call is None else round(self.switches_per_call, 1),
            **({"first_error": self.first_error} if self.first_error else {}),
        }


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


def _generate_load(spec: LoadSpec, pipe: Connection) -> _ChildReport:
    tls = spec.tls
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates, private_key=tls.private_key, certificate_chain=tls.certificate_chain
    )
    # Round robin over the servers' addresses; each server's certificate names localhost.
    options = [("grpc.lb_policy_name", "round_robin"), ("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(spec.target, credentials, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=15)
        except grpc.FutureTimeoutError:
            raise InternalError(f"the load generator could not connect to {spec.target}") from None
        counter = itertools.count()  # next() on it is atomic under the GIL: every call gets its own n
        probe = spec.workload.probe(channel, next(counter))
        call = spec.workload.open(channel)
        stop = threading.Event()
        lock = threading.Lock()
        done: list[list[tuple[float, float]]] = []  # per thread: (completed at, latency)
        failed: list[tuple[float, str]] = []

        def worker(samples: list[tuple[float, float]]) -> None:
            while not stop.is_set():
                n = next(counter)
                started = time.perf_counter()
                try:
                    call(n)
                except Exception as e:  # counted and reported; the load goes on
                    with lock:
                        failed.append((time.perf_counter(), _describe(e)))
                    time.sleep(0.001)  # a failing server must not turn the client into a busy loop
                    continue
                finished = time.perf_counter()
                samples.append((finished, finished - started))

        threads = []
        for i in range(spec.concurrency):
            samples: list[tuple[float, float]] = []
            done.append(samples)
            threads.append(threading.Thread(target=worker, args=(samples,), name=f"load-{i}", daemon=True))
        for t in threads:
            t.start()
        try:
            time.sleep(spec.warmup_seconds)
            window_start = time.perf_counter()
            pipe.send(("window-start", None))
            time.sleep(spec.measured_seconds)
            window_end = time.perf_counter()
            pipe.send(("window-end", None))
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    latencies = [lat for samples in done for at, lat in samples if window_start <= at < window_end]
    return _ChildReport(
        latencies_s=latencies,
        seconds=window_end - window_start,
        window_errors=sum(1 for at, _ in failed if window_start <= at < window_end),
        total_calls=sum(len(samples) for samples in done) + len(failed) + 1,
        total_errors=len(failed),
        first_error=min(failed)[1] if failed else None,
        probe=probe,
    )


def _child_main(spec: LoadSpec, pipe: Connection) -> None:
    """Entry point of the load generator's process: report the result or one line saying why not.

    It ignores SIGINT, as the server processes do: a Ctrl-C reaches the whole foreground process
    group, and the parent, which stops the child, is the one to answer it (with no traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            report = _generate_load(spec, pipe)
        except Exception as e:  # everything goes back to the parent as text: no traceback in the child
            pipe.send(("failed", _describe(e)))
        else:
            pipe.send(("result", report))
    except OSError:  # the parent is gone (a broken pipe): nobody is left to report to
        pass
    finally:
        pipe.close()


Usage = Callable[[], tuple[float, int]]
"""The servers' CPU seconds and voluntary context switches so far (``ServerProcesses.usage``)."""


def run_load(spec: LoadSpec, *, usage: Usage, start_timeout: float = 60.0) -> LoadResult:
    """Run ``spec`` in a separate process against the servers; sample their ``usage`` over the
    child's measured window. Raises :class:`InternalError` when the child cannot run at all; calls
    that fail are counted in the result instead."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(spec, sender), name="veilgate-bench-load", daemon=True)
    start_shielded(child)
    sender.close()
    cpu_start: float | None = None
    cpu_end: float | None = None
    switches_start = switches_end = 0
    deadline = time.monotonic() + start_timeout + spec.warmup_seconds + spec.measured_seconds
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InternalError("the load generator did not finish in time")
            if not receiver.poll(min(remaining, 0.5)):
                if not child.is_alive() and not receiver.poll(0):
                    raise InternalError(f"the load generator exited unexpectedly (exit code {child.exitcode})")
                continue
            try:
                kind, value = receiver.recv()
            except EOFError:
                raise InternalError(f"the load generator exited unexpectedly (exit code {child.exitcode})") from None
            if kind == "window-start":
                cpu_start, switches_start = usage()
            elif kind == "window-end":
                cpu_end, switches_end = usage()
            elif kind == "failed":
                raise InternalError(f"the load generator failed: {value}")
            else:
                report: _ChildReport = value
                break
    except BaseException:  # interrupted, or failed: nothing more is wanted from the child
        child.terminate()
        raise
    finally:
        receiver.close()
        end_process(child, wait=10)
    stats = latency_stats(report.latencies_s, seconds=report.seconds, errors=report.window_errors)
    cpu = switches = None
    if cpu_start is not None and cpu_end is not None and stats.calls:
        cpu = (cpu_end - cpu_start) / stats.calls * 1e6
        switches = (switches_end - switches_start) / stats.calls
    return LoadResult(
        stats=stats,
        cpu_us_per_call=cpu,
        switches_per_call=switches,
        total_calls=report.total_calls,
        total_errors=report.total_errors,
        first_error=report.first_error,
        probe=report.probe,
    )

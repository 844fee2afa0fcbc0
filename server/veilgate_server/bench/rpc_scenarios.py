"""The RPC scenarios: the bare-grpcio baseline, ``evaluate``, ``get_my_data`` and ``ingest``.

Each gateway scenario assembles a real gateway in a temporary directory, as ``veilgate serve`` would:
policies copied from the packaged ones and signed by a throwaway governance key (the gateway refuses
unsigned policies), an SQLite (WAL) store seeded with synthetic citizens, the production
``build_server`` with its interceptor chain (errors, durable audit append, institution
authentication) on TLS and mutual-TLS ports. Certificates are made once per process and shared with
the baseline, so both sides do the same handshakes and the same record-layer work.

What is and is not changed for the benchmark (every scenario records it in ``details``):

* the per-citizen daily query budget is raised to 100 (the gateway's default is lower): it bounds
  what one institution may learn about one citizen per day, and each evaluating citizen grants one
  consent of 100 uses; the budget is still counted, in the same transaction as every other consent
  use;
* consent-use accounting, request-token replay protection, signatures and the durable audit append
  stay on;
* ``get_my_data`` needs 188 items (the Quancheng-chain figure); the shipped catalog has fewer, so the
  benchmark's catalog adds a ``bench_padding`` department whose items are copies of the shipped items
  (same types, fields and sensitivity, so the same value sizes) and the seeded citizens get records
  for them;
* ``ingest`` pushes a synthetic population's records of every catalog item, in the catalog's own mix
  of types and sizes, from one department: the benchmark's catalog gives ``bench_padding`` a copy of
  each shipped item (as for ``get_my_data``), and each record is pushed as its item's copy. Batches
  of 500 records are dated today, so that every push is applied; each record is still checked
  against the catalog, sealed under its citizen's data key and stored in its push's log-entry
  transaction.
"""

from __future__ import annotations

import contextlib
import functools
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sqlalchemy.engine import make_url

from veilgate import CitizenWallet, GatewayKey, PolicyPin
from veilgate._internal import jose
from veilgate.consent import CONSENT_TYP
from veilgate.errors import ConfigurationError, InternalError, PolicyParameterInvalid, VeilgateError
from veilgate_server.admin import seed_population
from veilgate_server.bench.harness import (
    SERVER_WORKERS,
    BareServer,
    ClientTls,
    EvaluateWorkload,
    GatewayInfoWorkload,
    GetMyDataWorkload,
    IngestWorkload,
    LoadResult,
    LoadSpec,
    NoopWorkload,
    Workload,
    run_load,
)
from veilgate_server.bench.results import ScenarioResult, Target
from veilgate_server.bench.reviewed import PADDING_DEPARTMENT, reviewed_policies
from veilgate_server.bench.store_scenarios import postgres_schema
from veilgate_server.config import Settings, default_policies_dir
from veilgate_server.core.catalog import load_catalog
from veilgate_server.core.policy import Parameter, Policy, check_parameters, load_policies
from veilgate_server.crypto import CertificateAuthority, peer_certificate
from veilgate_server.crypto.institutions import InstitutionCA
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.processes import ServerProcesses, cpus_for
from veilgate_server.rpc.server import ServerTls
from veilgate_server.seed import generate_population
from veilgate_server.serving import GatewayProcess, ServeOptions, open_gateway
from veilgate_server.storage import Store

__all__ = [
    "BENCH_DAILY_BUDGET",
    "CONCURRENCY",
    "DELIVERY_ITEMS",
    "EVALUATE_TARGETS",
    "GET_MY_DATA_TARGETS",
    "INGEST_TARGETS",
    "SWEEP_LEVELS",
    "BenchPolicy",
    "RpcRun",
    "bench_audited_call",
    "bench_baseline",
    "bench_evaluate",
    "bench_get_my_data",
    "bench_ingest",
    "bench_policy",
    "default_durations",
    "latency_sweep",
    "load_bench_policies",
]

CONCURRENCY = 16
MAX_USES = 100  # the most uses a consent may allow
# Each evaluating citizen grants one consent of MAX_USES uses, so a daily budget of as many
# evaluations is never what stops a run, and a citizen's history stays as short as a real one.
BENCH_DAILY_BUDGET = MAX_USES
DELIVERY_ITEMS = 188
GATEWAY_ID = "veilgate.bench"
LOAN = "credit.consumer_loan"
LOAN_PARAMETERS = {"requested_amount_band": "50k_to_200k"}
BENCH_CITIZENS = 8
_REGISTER_CONSENT = "/veilgate.v1.CitizenService/RegisterConsent"

EVALUATE_TARGETS = (
    Target("ratio", ">=", 0.33, "evaluate ≥ 33 % of bare grpcio mTLS QPS"),
    Target("p99_ratio", "<=", 3.0, "p99 ≤ 3 × bare mTLS p99"),
    Target("errors", "<=", 0, "no failed calls"),
)
GET_MY_DATA_TARGETS = (
    Target("ratio", ">=", 0.30, "get_my_data (188 items) ≥ 30 % of bare grpcio TLS QPS"),
    Target("errors", "<=", 0, "no failed calls"),
    Target("items_delivered", ">=", DELIVERY_ITEMS, "all 188 items delivered"),
)

INGEST_TARGETS = (
    Target("rate", ">=", 20_000, "ingest ≥ 20,000 validated, encrypted records/s"),
    Target("errors", "<=", 0, "no failed pushes"),
)
INGEST_DEPARTMENT = PADDING_DEPARTMENT
INGEST_BATCH = 500  # records a push: half the most a push may hold
INGEST_PUSHES = 4  # pushes in flight


@dataclass(frozen=True, slots=True)
class BenchPolicy:
    """What ``evaluate`` (and the plot's evaluate series) asks: the policy, the parameters every call
    states, and the kind of institution the policy serves, which the bench institution is registered
    as. The default is the consumer loan a bank asks about, as in every run on record."""

    policy_id: str = LOAN
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(dict(LOAN_PARAMETERS)))
    purpose: str = LOAN
    institution_kind: str = "bank"

    @property
    def institution_id(self) -> str:
        return f"bench-{self.institution_kind}"


def _parameter_form(parameter: Parameter) -> str:
    if parameter.type == "enum":
        return "one of " + ", ".join(parameter.values)
    if parameter.type == "date":
        return "a date YYYY-MM-DD"
    return f"text of the form {parameter.pattern}, at most {parameter.max_length} characters"


def load_bench_policies(policies_dir: Path | None) -> dict[str, Policy]:
    """The policies of ``policies_dir`` (None: the packaged ones), loaded and compiled against its
    catalog as a gateway loads them: a catalog or policy the gateway would refuse is refused now."""
    source = policies_dir or default_policies_dir()
    return load_policies(source, load_catalog(source / "catalog.yaml"))


def bench_policy(policy_id: str | None, params: Sequence[str], policies_dir: Path | None = None) -> BenchPolicy:
    """The :class:`BenchPolicy` of ``--policy`` and its ``--param NAME=VALUE`` options, checked
    against the policy in ``policies_dir`` (None: the packaged ones) as the gateway will check every
    call, so that a mistake stops the run before its first measurement rather than failing every
    call of it. Without ``policy_id``, the consumer loan, whose ``requested_amount_band`` a
    ``--param`` may change. Any other policy takes no parameter it was not given: each is named with
    its form when missing."""
    given: dict[str, str] = {}
    for param in params:
        name, equals, value = param.partition("=")
        if not (equals and name):
            raise ConfigurationError(f"--param {param!r}: give NAME=VALUE")
        if name in given:
            raise ConfigurationError(f"--param {name}: given twice")
        given[name] = value
    chosen = LOAN if policy_id is None else policy_id  # "--policy ''" names no policy, not the default
    source = policies_dir or default_policies_dir()
    policies = load_bench_policies(source)
    policy = policies.get(chosen)
    choices = ", ".join(sorted(policies)) or "none: it holds no policy"
    if policy is None and policy_id is None:
        raise ConfigurationError(
            f"--policies-dir {source} has no {LOAN}, which evaluate asks unless --policy names another; "
            f"choose from {choices}"
        )
    if policy is None:
        raise ConfigurationError(f"--policy {chosen!r}: no such policy; choose from {choices}")
    parameters = {**LOAN_PARAMETERS, **given} if chosen == LOAN else given
    missing = [name for name in policy.parameters if name not in parameters]
    if missing:
        needed = "; ".join(f"{name} ({_parameter_form(policy.parameters[name])})" for name in missing)
        raise ConfigurationError(f"--policy {chosen} needs --param NAME=VALUE for: {needed}")
    try:
        check_parameters(policy, parameters)
    except PolicyParameterInvalid as e:
        raise ConfigurationError(f"--param: {e.message}") from None
    return BenchPolicy(
        policy_id=chosen,
        parameters=MappingProxyType(parameters),
        purpose=policy.purpose,
        institution_kind=policy.institution_kinds[0],
    )


Seconds = tuple[float, float]
"""(warm-up, measured) seconds of one load run."""


def default_durations(quick: bool) -> Seconds:
    """A load run's (warm-up, measured) seconds unless the run says otherwise: quick 1 + 4, full 3 + 15."""
    return (1.0, 4.0) if quick else (3.0, 15.0)


@dataclass(frozen=True, slots=True)
class RpcRun:
    """How the baseline and every gateway scenario of one benchmark run are measured, alike."""

    quick: bool = False
    concurrency: int = CONCURRENCY
    seconds: Seconds | None = None  # (warm-up, measured); None: default_durations(quick)
    processes: int = 1  # server processes, for the gateway and the bare baseline alike
    postgres_url: str | None = None  # the gateway's store in a fresh schema there; None: SQLite
    pin: bool = True  # each server process on a CPU of its own, as ``veilgate serve --processes`` runs them
    pushes: int | None = None  # ingest's pushes in flight; None: INGEST_PUSHES
    policy: BenchPolicy = field(default_factory=BenchPolicy)  # what evaluate asks
    policies_dir: Path | None = None  # the catalog and policies measured; None: the packaged ones

    @property
    def durations(self) -> Seconds:
        return self.seconds if self.seconds is not None else default_durations(self.quick)

    def spec(self, target: str, tls: ClientTls, workload: Workload) -> LoadSpec:
        return _spec(target, tls, workload, seconds=self.durations, concurrency=self.concurrency)

    def details(self) -> dict[str, Any]:
        """What every gateway scenario records about how it ran."""
        warmup, measured = self.durations
        store = "SQLite (WAL) in a temporary directory"
        if self.postgres_url:
            url = make_url(self.postgres_url)
            store = f"PostgreSQL at {url.host}:{url.port}, a fresh schema dropped afterwards"
        return {
            "processes": self.processes,
            "pinned_cpus": _pinned(self.processes, self.pin),
            "concurrency": self.concurrency,
            "warmup_s": warmup,
            "measured_s": measured,
            "store": store,
            "policies": str(self.policies_dir) if self.policies_dir else "packaged",
            "server": "build_server: sync grpc.server, 8 workers per process, full interceptor chain",
            "daily_budget": f"{BENCH_DAILY_BUDGET} evaluations per citizen per day, counted per use",
            "unchanged": "consent-use accounting, token replay protection, signatures, durable audit append",
        }

    def gateway(
        self, *, pad_to: int | None = None, citizens: int = BENCH_CITIZENS
    ) -> contextlib.AbstractContextManager[_BenchGateway]:
        """The gateway under test, served and stored as this run says (see :func:`_bench_gateway`)."""
        return _bench_gateway(
            pad_to=pad_to,
            citizens=citizens,
            processes=self.processes,
            postgres_url=self.postgres_url,
            pin=self.pin,
            policies_dir=self.policies_dir,
        )


# --- certificates shared by the baseline and the gateway -------------------------------------------


@dataclass(frozen=True, slots=True)
class _Certificates:
    root_certificates: bytes
    server: ServerTls
    institution_ca: InstitutionCA
    baseline_client: ClientTls  # mutual TLS to the bare server: a client certificate from the same CA


@functools.cache
def _certificates() -> _Certificates:
    """One CA, server certificate and institution CA per process: the baseline and every gateway
    scenario present and check the very same certificates."""
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("Veilgate bench CA", now=now)
    chain, key = ca.issue("veilgate-bench", hosts=["localhost", "127.0.0.1"], now=now)
    institution_ca = InstitutionCA.create(now=now)
    client_cert, client_key, _ = institution_ca.issue_client_certificate("bench-baseline", now=now)
    return _Certificates(
        root_certificates=ca.certificate_pem,
        server=ServerTls(certificate_chain=chain, private_key=key, client_ca=institution_ca.certificate_pem),
        institution_ca=institution_ca,
        baseline_client=ClientTls(ca.certificate_pem, certificate_chain=client_cert, private_key=client_key),
    )


def _spec(target: str, tls: ClientTls, workload: Workload, *, seconds: Seconds, concurrency: int) -> LoadSpec:
    warmup, measured = seconds
    return LoadSpec(
        target=target,
        tls=tls,
        workload=workload,
        concurrency=concurrency,
        warmup_seconds=warmup,
        measured_seconds=measured,
    )


# --- baseline -------------------------------------------------------------------------------------


def _pinned(processes: int, pin: bool) -> list[int] | None:
    """The CPUs ``processes`` server processes are pinned to (see ``rpc.processes.cpus_for``)."""
    cpus = cpus_for(processes) if pin else None
    return list(cpus) if cpus is not None else None


def _bare_servers(processes: int, *, pin: bool) -> ServerProcesses:
    certs = _certificates()
    bare = BareServer(
        certificate_chain=certs.server.certificate_chain,
        private_key=certs.server.private_key,
        client_ca=certs.institution_ca.certificate_pem,
    )
    return ServerProcesses(bare, count=processes, name="veilgate-bench-bare", pin=pin)


def _measure_bare(processes: int, *, seconds: Seconds, concurrency: int, pin: bool) -> dict[str, dict[str, Any]]:
    """The bare server in ``processes`` processes, over TLS and over mutual TLS."""
    certs = _certificates()
    figures: dict[str, dict[str, Any]] = {}
    with _bare_servers(processes, pin=pin) as bare:
        runs = {
            "tls": (bare.target, ClientTls(certs.root_certificates)),
            "mtls": (bare.mtls_target, certs.baseline_client),
        }
        for name, (target, tls) in runs.items():
            spec = _spec(target, tls, NoopWorkload(), seconds=seconds, concurrency=concurrency)
            result = run_load(spec, usage=bare.usage)
            if result.stats.calls == 0:
                raise InternalError(f"the bare {name} baseline completed no call: {result.first_error}")
            figures[name] = {**result.figures(), "processes": processes, "pinned_cpus": bare.pinned}
    return figures


def bench_baseline(run: RpcRun) -> dict[str, Any]:
    """The bare grpcio no-op over TLS and over mutual TLS; the JSON ``baseline`` section::

        {"server": str, "processes": int, "concurrency": int, "warmup_s": float, "measured_s": float,
         "tls":  {"qps", "p50_ms", "p99_ms", "calls", "seconds", "errors", "cpu_us_per_call",
                  "switches_per_call", "processes"},
         "mtls": {... the same ...},
         "runs": {"<processes>": {"tls": {...}, "mtls": {...}}, ...}}

    The bare server is measured in ``run.processes`` server processes, as the gateway scenarios are
    served, and (when that is more than one) in a single process too. On a machine whose cores the
    load generator shares, one bare process can be the faster: ``tls`` and ``mtls`` are each the
    faster of the runs, so that a gateway served by several processes is never judged against a
    baseline slowed down by them. Every run is kept under ``runs``.

    Raises :class:`InternalError` when the baseline cannot be measured (nothing else can be judged)."""
    durations = run.durations
    runs = {
        str(count): _measure_bare(count, seconds=durations, concurrency=run.concurrency, pin=run.pin)
        for count in sorted({run.processes, 1}, reverse=True)
    }
    section: dict[str, Any] = {
        "server": "sync grpc.server, ThreadPoolExecutor(8) per process, generic handler, bytes no-op",
        "processes": run.processes,
        "pinned_cpus": _pinned(run.processes, run.pin),
        "concurrency": run.concurrency,
        "warmup_s": durations[0],
        "measured_s": durations[1],
    }
    for name in ("tls", "mtls"):
        section[name] = max((run[name] for run in runs.values()), key=lambda figures: float(figures["qps"]))
    section["runs"] = runs
    return section


def bench_baseline_again(run: RpcRun, baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The bare server measured again, as before, once the gateway scenarios have run: how far the
    machine's own speed moved meanwhile (machines here are shared). The JSON ``baseline.after``::

        {"tls": {...figures...}, "mtls": {...}, "drift": {"tls": float, "mtls": float}}

    Each transport is measured in the process count its first figure came from; ``drift`` is the
    second QPS over the first, minus one. The ratios stay against the first measurement, which the
    issue asks for; this says how much to trust them. Raises :class:`InternalError` as
    :func:`bench_baseline` does (``run_bench`` then records ``{"error": ...}`` and keeps the run)."""
    counts = {int(baseline[name]["processes"]) for name in ("tls", "mtls")}
    again = {
        count: _measure_bare(count, seconds=run.durations, concurrency=run.concurrency, pin=run.pin)
        for count in sorted(counts, reverse=True)
    }
    section: dict[str, Any] = {}
    drift: dict[str, float] = {}
    for name in ("tls", "mtls"):
        figures = again[int(baseline[name]["processes"])][name]
        section[name] = figures
        drift[name] = round(float(figures["qps"]) / float(baseline[name]["qps"]) - 1, 3)
    section["drift"] = drift
    return section


# --- the gateway under test -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BenchGateway:
    gateway: Gateway  # this process's own, for setting the scene through the real operations
    store: Store
    servers: ServerProcesses
    root: Path
    citizen_ids: tuple[str, ...]
    catalog_items: int

    @property
    def target(self) -> str:
        return self.servers.target

    @property
    def mtls_target(self) -> str:
        return self.servers.mtls_target

    def load(self, spec: LoadSpec) -> LoadResult:
        return run_load(spec, usage=self.servers.usage)

    @property
    def keys(self) -> tuple[GatewayKey, ...]:
        signer = self.gateway.signer
        return (GatewayKey(key_id=signer.key_id, public_key=signer.public_key),)

    def enroll(self, citizen_id: str) -> CitizenWallet:
        wallet = CitizenWallet.generate(citizen_id)
        self.store.citizens.enroll(
            citizen_id,
            signing_key=wallet.signing_public_key,
            encryption_key=wallet.encryption_public_key,
            at=datetime.now(UTC),
        )
        return wallet


@contextlib.contextmanager
def _bench_gateway(
    *,
    pad_to: int | None = None,
    citizens: int = BENCH_CITIZENS,
    processes: int = 1,
    postgres_url: str | None = None,
    pin: bool = True,
    policies_dir: Path | None = None,
) -> Iterator[_BenchGateway]:
    """A gateway served by ``processes`` server processes as ``veilgate serve --processes`` would,
    on SQLite in a temporary directory, or in a fresh schema of the PostgreSQL server at
    ``postgres_url``, under a signed copy of the catalog and policies in ``policies_dir`` (None: the
    packaged ones); everything is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="veilgate-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            database_url = stack.enter_context(postgres_schema(postgres_url)) if postgres_url else None
            yield stack.enter_context(_gateway_in(root, database_url, pad_to, citizens, processes, pin, policies_dir))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _gateway_in(
    root: Path,
    database_url: str | None,
    pad_to: int | None,
    citizens: int,
    processes: int,
    pin: bool,
    source: Path | None,
) -> Iterator[_BenchGateway]:
    policies_dir, governance_key = reviewed_policies(root, pad_to=pad_to, source=source)
    settings = Settings(
        data_dir=root,
        database_url=database_url,
        policies_dir=policies_dir,
        gateway_id=GATEWAY_ID,
        governance_keys=(governance_key,),
    )
    gateway = open_gateway(settings, daily_budget=BENCH_DAILY_BUDGET)
    try:
        seed_population(gateway.store, gateway.catalog, citizens=citizens, seed=7)
        options = ServeOptions(
            address="127.0.0.1:0",
            tls=_certificates().server,
            mtls_address="127.0.0.1:0",
            workers=SERVER_WORKERS,
            daily_budget=BENCH_DAILY_BUDGET,
        )
        serving = GatewayProcess(settings, options, stop_grace=None)
        with ServerProcesses(serving, count=processes, name="veilgate-bench-gateway", pin=pin) as servers:
            yield _BenchGateway(
                gateway=gateway,
                store=gateway.store,
                servers=servers,
                root=root,
                citizen_ids=tuple(gateway.store.records.citizen_ids(limit=citizens)),
                catalog_items=len(gateway.catalog.items),
            )
    finally:
        gateway.store.close()


def _judged(
    name: str,
    result: LoadResult,
    *,
    baseline: Mapping[str, Any],
    transport: str,
    details: dict[str, Any],
    targets: tuple[Target, ...],
    extra: Mapping[str, float | None] | None = None,
) -> ScenarioResult:
    bare = baseline[transport]
    stats = result.stats
    bare_qps, bare_p99 = float(bare["qps"]), float(bare["p99_ms"])
    p99_ratio = stats.p99_ms / bare_p99 if bare_p99 > 0 and stats.calls else None
    cpu, bare_cpu = result.cpu_us_per_call, bare.get("cpu_us_per_call")
    details.update(
        calls=stats.calls,
        errors=result.total_errors,
        cpu_us_per_call=None if cpu is None else round(cpu, 1),
        # the sizing answers: calls a core of server CPU serves at this load, and the CPU a call
        # costs over a bare gRPC call (for audited_call: what the audit log costs a call)
        calls_per_core_second=None if not cpu else round(1e6 / cpu),
        cpu_us_over_bare=None if cpu is None or bare_cpu is None else round(cpu - float(bare_cpu), 1),
        baseline_transport=transport,
        baseline_p99_ms=bare_p99,
        switches_per_call=None if result.switches_per_call is None else round(result.switches_per_call, 1),
        baseline_cpu_us_per_call=bare.get("cpu_us_per_call"),
        baseline_switches_per_call=bare.get("switches_per_call"),
        p99_ratio=None if p99_ratio is None else round(p99_ratio, 2),
        probe=result.probe,
    )
    if result.first_error:
        details["first_error"] = result.first_error
    scenario = ScenarioResult(
        name=name,
        qps=round(stats.qps, 1),
        p50_ms=round(stats.p50_ms, 3),
        p99_ms=round(stats.p99_ms, 3),
        baseline_qps=bare_qps,
        ratio=round(stats.qps / bare_qps, 3) if bare_qps > 0 else None,
        details=details,
    )
    figures = {"p99_ratio": p99_ratio, "errors": float(result.total_errors), **(extra or {})}
    return scenario.judge(*targets, extra=figures)


def _not_measured(name: str, targets: tuple[Target, ...], message: str, details: dict[str, Any]) -> ScenarioResult:
    """A scenario that could not run: no figures, the reason in ``details``; it does not meet its target."""
    scenario = ScenarioResult(name=name, details={**details, "error": message}).judge(*targets)
    scenario.meets = False  # no figure can hold: a run that did not happen meets nothing
    return scenario


# --- audited_call ---------------------------------------------------------------------------------


def bench_audited_call(baseline: Mapping[str, Any], run: RpcRun) -> ScenarioResult:
    """GetGatewayInfo over TLS: the interceptor chain and a durable audit-log entry, and no other
    work. No target: it is the floor under every gateway call, and answers "what does the audit log
    cost" per call. Judged against nothing; reported against the bare TLS baseline."""
    details = run.details()
    details["call"] = "CitizenService.GetGatewayInfo: no store read, one durable log entry"
    try:
        with run.gateway() as bench:
            tls = ClientTls(_certificates().root_certificates)
            result = bench.load(run.spec(bench.target, tls, GatewayInfoWorkload(GATEWAY_ID)))
    except VeilgateError as e:
        return _not_measured("audited_call", (), e.message, details)
    return _judged("audited_call", result, baseline=baseline, transport="tls", details=details, targets=())


# --- evaluate -------------------------------------------------------------------------------------


def _seen_before(bench: _BenchGateway, citizen_ids: Sequence[str]) -> None:
    """Give the citizens their audit-log pseudonym keys, as their first logged call would have: the
    run then measures the steady state, not a write per citizen that happens once in their life."""
    for citizen_id in citizen_ids:
        bench.store.log.pseudonym_key(citizen_id, create=True)


def _consents_for(bare_qps: float, seconds: float) -> int:
    """Consents enough for a run at the bare server's pace (the gateway cannot go faster)."""
    return math.ceil((bare_qps * seconds * 1.25 + 1) / MAX_USES) + 4


def _issue_consents(
    bench: _BenchGateway, wallets: list[CitizenWallet], count: int, asked: BenchPolicy
) -> tuple[str, ...]:
    """``count`` consents for the bench institution to ask ``asked``, spread over the wallets, each
    registered through the gateway's own RegisterConsent operation (in process: the checks and the
    store are the real ones)."""
    pins = [PolicyPin(asked.policy_id, bench.gateway.policies[asked.policy_id].sha256)]
    tokens = []
    for n in range(count):
        wallet = wallets[n % len(wallets)]
        token = wallet.consent_token(
            institution_id=asked.institution_id,
            purpose=asked.purpose,
            policies=pins,
            max_uses=MAX_USES,
            valid_for=3600,
        )
        consent_id = jose.unverified_claims(token, typ=CONSENT_TYP).claims["jti"]
        request = wallet.request_token(audience=GATEWAY_ID, operation=_REGISTER_CONSENT, claims={"consent": consent_id})
        bench.gateway.register_consent(request, token)
        tokens.append(token)
    return tuple(tokens)


def _register_institution(bench: _BenchGateway, asked: BenchPolicy) -> ClientTls:
    """Register the bench institution (of the kind ``asked`` serves) and issue its client
    certificate; the mutual-TLS client it makes."""
    now = datetime.now(UTC)
    institution = asked.institution_id
    bench.store.institutions.register(
        institution, kind=asked.institution_kind, name=f"Benchmark {asked.institution_kind}", at=now
    )
    cert, key, serial = _certificates().institution_ca.issue_client_certificate(institution, now=now)
    bench.store.certificates.record(
        "institution", institution, serial, at=now, not_after=peer_certificate(cert).not_after
    )
    return ClientTls(_certificates().root_certificates, certificate_chain=cert, private_key=key)


def _evaluate_label(asked: BenchPolicy) -> str:
    """The plot's name for evaluate's series: the policy named when it is not the default."""
    return "evaluate" if asked.policy_id == LOAN else f"evaluate ({asked.policy_id})"


def _evaluate_workload(bench: _BenchGateway, consents: tuple[str, ...], asked: BenchPolicy) -> EvaluateWorkload:
    return EvaluateWorkload(
        policy_id=asked.policy_id,
        parameters=dict(asked.parameters),
        consent_tokens=consents,
        max_uses=MAX_USES,
        institution_id=asked.institution_id,
        gateway_keys=bench.keys,
        run_tag=f"bench-{secrets.token_hex(4)}",
    )


def bench_evaluate(baseline: Mapping[str, Any], run: RpcRun) -> ScenarioResult:
    """An institution over mutual TLS calls Evaluate (of ``run.policy``: by default a bank's
    credit.consumer_loan) under valid consents: consent JWS verify, consent-use accounting, CEL
    policy, signed result, durable audit append. Judged against the bare mTLS baseline
    (``baseline`` is what :func:`bench_baseline` returned)."""
    warmup, measured = run.durations
    details = run.details()
    # The gateway cannot beat the bare server: its QPS bounds the calls one run can make. One
    # citizen per consent (see BENCH_DAILY_BUDGET).
    needed = _consents_for(float(baseline["mtls"]["qps"]), warmup + measured)
    try:
        with run.gateway(citizens=needed) as bench:
            started = time.perf_counter()
            wallets = [bench.enroll(citizen_id) for citizen_id in bench.citizen_ids]
            asked = run.policy
            tls = _register_institution(bench, asked)
            consents = _issue_consents(bench, wallets, needed, asked)
            _seen_before(bench, bench.citizen_ids)
            details["consent_setup_s"] = round(time.perf_counter() - started, 2)
            details.update(
                policy=asked.policy_id,
                parameters=dict(asked.parameters),
                institution_kind=asked.institution_kind,
                citizens=len(wallets),
                consents=len(consents),
                consent_max_uses=MAX_USES,
                consent_rotation="call n uses consent n mod consents (never more than max_uses each); one per citizen",
                pseudonym_keys="created in setup (a citizen's first logged call creates theirs, once)",
            )
            workload = _evaluate_workload(bench, consents, asked)
            result = bench.load(run.spec(bench.mtls_target, tls, workload))
    except VeilgateError as e:
        return _not_measured("evaluate", EVALUATE_TARGETS, e.message, details)
    return _judged("evaluate", result, baseline=baseline, transport="mtls", details=details, targets=EVALUATE_TARGETS)


# --- get_my_data ----------------------------------------------------------------------------------


def _citizen_workload(bench: _BenchGateway) -> GetMyDataWorkload:
    """Enroll the first seeded citizen with a new wallet, saved (passphrase-protected) for the client."""
    wallet = bench.enroll(bench.citizen_ids[0])
    passphrase = secrets.token_urlsafe(16)
    wallet_path = bench.root / f"bench-citizen-{secrets.token_hex(4)}.wallet"
    wallet.save(wallet_path, passphrase, kdf="interactive")
    return GetMyDataWorkload(
        wallet_path=str(wallet_path), passphrase=passphrase, gateway_id=GATEWAY_ID, gateway_keys=bench.keys
    )


def bench_get_my_data(baseline: Mapping[str, Any], run: RpcRun) -> ScenarioResult:
    """A citizen over TLS fetches all their records (188 items): request-token verify and spend,
    records decrypted, gateway-signed delivery sealed to the citizen's key, durable audit append.
    Judged against the bare TLS baseline."""
    details = run.details()
    try:
        with run.gateway(pad_to=DELIVERY_ITEMS) as bench:
            workload = _citizen_workload(bench)
            details.update(
                catalog_items=bench.catalog_items,
                padding=(
                    f"catalog padded to {DELIVERY_ITEMS} items with a '{PADDING_DEPARTMENT}' department of "
                    "copies of the shipped items (same types and sensitivity); records seeded for them"
                ),
                request_tokens="a fresh single-use token per call, signed in the client process",
            )
            tls = ClientTls(_certificates().root_certificates)
            result = bench.load(run.spec(bench.target, tls, workload))
    except VeilgateError as e:
        return _not_measured("get_my_data", GET_MY_DATA_TARGETS, e.message, details)
    delivered = result.probe.get("items")
    details["items_delivered"] = delivered
    return _judged(
        "get_my_data",
        result,
        baseline=baseline,
        transport="tls",
        details=details,
        targets=GET_MY_DATA_TARGETS,
        extra={"items_delivered": float(delivered) if isinstance(delivered, int) else None},
    )


# --- ingest ---------------------------------------------------------------------------------------


def _shipped_items(policies_dir: Path | None) -> int:
    return len(load_catalog((policies_dir or default_policies_dir()) / "catalog.yaml").items)


def _feed_records(bench: _BenchGateway, citizens: int) -> list[tuple[str, str, str]]:
    """A synthetic population's records of every shipped item, each as its ``bench_padding`` copy
    (``<department>.<name>`` is ``bench_padding.<name>_p1``): ``(citizen_id, item_id, value_json)``.
    Seeded apart from the gateway's own citizens."""
    catalog = bench.gateway.catalog
    records = []
    for person in generate_population(catalog, citizens=citizens, seed=23):
        for r in person.records:
            if r.department == INGEST_DEPARTMENT:
                continue
            copy = f"{INGEST_DEPARTMENT}.{r.item_id.split('.', 1)[1]}_p1"
            catalog.item(copy)  # the padded catalog has it, or the run stops here
            records.append((r.citizen_id, copy, jose.canonical_json(r.value).decode()))
    return records


def _register_department(bench: _BenchGateway) -> ClientTls:
    """Register the pushing department and issue its client certificate; the mutual-TLS client it makes."""
    now = datetime.now(UTC)
    cert, key, serial = _certificates().institution_ca.issue_client_certificate(
        INGEST_DEPARTMENT, kind="department", now=now
    )
    bench.store.departments.register(
        INGEST_DEPARTMENT, at=now, certificate_serial=serial, certificate_not_after=peer_certificate(cert).not_after
    )
    return ClientTls(_certificates().root_certificates, certificate_chain=cert, private_key=key)


def bench_ingest(run: RpcRun) -> ScenarioResult:
    """A department over mutual TLS pushes batches of records: each checked against the catalog,
    sealed under its citizen's data key and stored with its push's durable log entry. ``rate`` is
    records stored per second; judged against the issue's absolute target (no bare baseline: a
    push's work is per record, and the target is one of records)."""
    details = run.details()
    citizens = 30 if run.quick else 250
    in_flight = run.pushes or INGEST_PUSHES
    try:
        shipped = _shipped_items(run.policies_dir)
        with run.gateway(pad_to=2 * shipped) as bench:
            tls = _register_department(bench)
            records = _feed_records(bench, citizens)
            batches = tuple(
                tuple(records[i : i + INGEST_BATCH]) for i in range(0, len(records) - INGEST_BATCH + 1, INGEST_BATCH)
            )
            workload = IngestWorkload(batches=batches, as_of=date.today().isoformat())
            details.update(
                concurrency=in_flight,
                concurrency_reason=(
                    f"{INGEST_PUSHES} pushes of {INGEST_BATCH} records in flight unless --concurrency says otherwise: "
                    "a department's feed, not a crowd of callers (other levels in docs/performance.md)"
                ),
                department=f"{INGEST_DEPARTMENT}, owning a copy of each of the {shipped} shipped items",
                records_per_push=INGEST_BATCH,
                distinct_records=len(batches) * INGEST_BATCH,
                citizens=citizens,
                mean_value_bytes=round(sum(len(v) for _, _, v in records) / len(records), 1),
                rounds="push n sends batch n mod batches; round 1 inserts and makes data keys, later ones replace",
            )
            spec = _spec(bench.mtls_target, tls, workload, seconds=run.durations, concurrency=in_flight)
            result = bench.load(spec)
    except VeilgateError as e:
        return _not_measured("ingest", INGEST_TARGETS, e.message, details)
    stats, cpu = result.stats, result.cpu_us_per_call
    details.update(
        pushes=stats.calls,
        pushes_per_s=round(stats.qps, 1),
        errors=result.total_errors,
        cpu_us_per_record=None if cpu is None else round(cpu / INGEST_BATCH, 1),
        records_per_core_second=None if not cpu else round(1e6 * INGEST_BATCH / cpu),
        probe=result.probe,
    )
    if result.first_error:
        details["first_error"] = result.first_error
    scenario = ScenarioResult(
        name="ingest",
        rate=round(stats.qps * INGEST_BATCH, 1),
        p50_ms=round(stats.p50_ms, 3),
        p99_ms=round(stats.p99_ms, 3),
        details=details,
    )
    return scenario.judge(*INGEST_TARGETS, extra={"errors": float(result.total_errors)})


# --- latency versus concurrency (for the plot) -----------------------------------------------------

SWEEP_LEVELS = (1, 4, 16, 64)


def latency_sweep(
    *,
    quick: bool,
    levels: tuple[int, ...] = SWEEP_LEVELS,
    processes: int = 1,
    pin: bool = True,
    policy: BenchPolicy | None = None,
    policies_dir: Path | None = None,
) -> dict[str, list[tuple[int, float, float]]]:
    """Latency versus calls in flight, for ``report.write_plot``: ``{label: [(in flight, p50 ms,
    p99 ms), ...]}`` for the bare server (TLS, mTLS), ``evaluate`` (of ``policy``, by default the
    consumer loan) and ``get_my_data``, under the catalog and policies in ``policies_dir`` (None:
    the packaged ones). One bare server
    and one gateway (catalog padded to 188 items) serve every level; each level is a fresh load
    generator. Quick: 0.5 s warm-up + 2 s per point; full: 1 + 5. Raises :class:`InternalError` when
    a run cannot be made."""
    seconds: Seconds = (0.5, 2.0) if quick else (1.0, 5.0)
    certs = _certificates()
    series: dict[str, list[tuple[int, float, float]]] = {}
    bare_qps: dict[int, float] = {}

    def point(label: str, n: int, result: LoadResult) -> None:
        if result.total_errors:
            raise InternalError(f"{label} at {n} in flight: {result.total_errors} failed calls: {result.first_error}")
        series.setdefault(label, []).append((n, result.stats.p50_ms, result.stats.p99_ms))

    with _bare_servers(processes, pin=pin) as bare:
        for n in levels:
            tls = _spec(bare.target, ClientTls(certs.root_certificates), NoopWorkload(), seconds=seconds, concurrency=n)
            point("bare TLS", n, run_load(tls, usage=bare.usage))
            mtls = run_load(
                _spec(bare.mtls_target, certs.baseline_client, NoopWorkload(), seconds=seconds, concurrency=n),
                usage=bare.usage,
            )
            point("bare mTLS", n, mtls)
            bare_qps[n] = mtls.stats.qps
    needed = {n: _consents_for(bare_qps[n], sum(seconds)) for n in levels}
    with _bench_gateway(
        pad_to=DELIVERY_ITEMS,
        citizens=1 + sum(needed.values()),
        processes=processes,
        pin=pin,
        policies_dir=policies_dir,
    ) as bench:
        citizen = _citizen_workload(bench)  # citizen_ids[0]: the one who fetches their data
        asked = policy or BenchPolicy()
        institution = _register_institution(bench, asked)
        evaluate_label = _evaluate_label(asked)
        evaluating = iter(bench.citizen_ids[1:])  # one consent per citizen, as in bench_evaluate
        for n in levels:
            wallets = [bench.enroll(next(evaluating)) for _ in range(needed[n])]
            consents = _issue_consents(bench, wallets, needed[n], asked)
            _seen_before(bench, [wallet.citizen_id for wallet in wallets])
            evaluate = _spec(
                bench.mtls_target,
                institution,
                _evaluate_workload(bench, consents, asked),
                seconds=seconds,
                concurrency=n,
            )
            point(evaluate_label, n, bench.load(evaluate))
            fetch = _spec(bench.target, ClientTls(certs.root_certificates), citizen, seconds=seconds, concurrency=n)
            point("get_my_data", n, bench.load(fetch))
    return series

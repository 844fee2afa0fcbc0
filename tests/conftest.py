"""Fixtures shared by every test directory.

Backends
--------
Request ``database_url`` and the test runs twice, once per storage backend (ids ``sqlite`` and
``postgresql``); nothing else is needed in a test module, RPC and end-to-end tests included::

    def test_something(database_url: str) -> None:
        with Store.open(database_url) as store: ...

or request ``store`` for an already migrated, opened :class:`Store` on the same database.

* ``sqlite``: a fresh ``veilgate.db`` in the test's ``tmp_path``.
* ``postgresql``: the server at ``VEILGATE_TEST_POSTGRES_URL`` (default
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Every test gets its own schema
  ``vg_test_<hex>``, selected through the URL (``?options=-csearch_path%3D<schema>``, honoured by
  psycopg and therefore by SQLAlchemy and Alembic, whose version table lands there too), and dropped
  with ``CASCADE`` afterwards. Such URLs can be handed to a gateway subprocess as they are.
  If the server is unreachable the PostgreSQL runs are skipped with the reason, or fail when
  ``VEILGATE_REQUIRE_POSTGRES=1`` (CI). They carry the ``postgres`` marker (``-m "not postgres"``).

``make_database_url`` gives further fresh databases on the same backend, for tests that need more
than one (they are cleaned up the same way).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from veilgate import AuditClient, CitizenClient, CitizenWallet, DepartmentClient, InstitutionClient, PolicyPin
from veilgate_server.admin import seed_population
from veilgate_server.config import default_policies_dir
from veilgate_server.core.catalog import Catalog, load_catalog
from veilgate_server.core.policy import Policy, load_policies
from veilgate_server.crypto import CertificateAuthority, GatewaySigner, peer_certificate
from veilgate_server.crypto.institutions import InstitutionCA
from veilgate_server.crypto.note import NoteSigner
from veilgate_server.crypto.records import RecordsKey
from veilgate_server.gateway import Gateway
from veilgate_server.rpc.server import ServerTls, build_server
from veilgate_server.storage import Store, sqlite_url

POSTGRES_URL_ENV = "VEILGATE_TEST_POSTGRES_URL"
REQUIRE_POSTGRES_ENV = "VEILGATE_REQUIRE_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]
"""The ``params`` of ``database_url``; reuse it to parametrize a fixture of your own by backend."""


def _postgres_base_url() -> URL:
    return make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))


def _admin_connection(url: URL, *, timeout_seconds: int = 2) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=url.database,
        connect_timeout=timeout_seconds,
        autocommit=True,
    )


@pytest.fixture(scope="session")
def _postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it can. Probed once per session."""
    url = _postgres_base_url()
    try:
        with _admin_connection(url) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"PostgreSQL not reachable at {url.host}:{url.port}: {first_line}"
    return None


class _DatabaseFactory:
    """Creates fresh, isolated databases on one backend and removes them at teardown."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self._backend = backend
        self._tmp_path = tmp_path
        self._schemas: list[str] = []

    def __call__(self) -> str:
        if self._backend == "sqlite":
            data_dir = self._tmp_path / f"db-{secrets.token_hex(4)}"
            data_dir.mkdir()
            return sqlite_url(data_dir)
        base = _postgres_base_url()
        schema = f"vg_test_{secrets.token_hex(6)}"
        with _admin_connection(base) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        self._schemas.append(schema)
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def cleanup(self) -> None:
        if not self._schemas:
            return
        with _admin_connection(_postgres_base_url()) as conn:
            for schema in self._schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """``"sqlite"`` or ``"postgresql"``; skips or fails the PostgreSQL run when it is unreachable."""
    backend: str = request.param
    if backend == "postgresql":
        reason: str | None = request.getfixturevalue("_postgres_unreachable")
        if reason is not None:
            if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
                pytest.fail(reason)
            pytest.skip(reason)
    return backend


@pytest.fixture
def make_database_url(db_backend: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh database URLs on the current backend, cleaned up after the test."""
    factory = _DatabaseFactory(db_backend, tmp_path)
    yield factory
    factory.cleanup()


@pytest.fixture
def database_url(make_database_url: Callable[[], str]) -> str:
    """A fresh, empty database on each backend in turn (see the module docstring)."""
    return make_database_url()


@pytest.fixture
def records_key() -> RecordsKey:
    """A fresh records key: the ``store`` fixture's, and any other store's on the same database."""
    return RecordsKey.generate()


@pytest.fixture
def store(database_url: str, records_key: RecordsKey) -> Iterator[Store]:
    """A migrated :class:`Store` on ``database_url`` with ``records_key``, closed after the test."""
    opened = Store.open(database_url, records_key=records_key)
    yield opened
    opened.close()


# --- a real gateway on 127.0.0.1:0 with real TLS ---------------------------------------------------


class MutableClock:
    """The gateway's clock in tests: real time until a test moves it. Tests never sleep."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class InstitutionCredentials:
    institution_id: str
    certificate_pem: bytes
    private_key_pem: bytes


@dataclass(frozen=True)
class DepartmentCredentials:
    department_id: str
    certificate_pem: bytes
    private_key_pem: bytes


@dataclass
class GatewayHarness:
    """A running gateway over TLS with a test CA, on a real store, seeded with a small population."""

    target: str
    mtls_target: str
    ca_pem: bytes
    gateway: Gateway
    clock: MutableClock
    store: Store
    citizen_ids: tuple[str, ...]
    institution_ca: InstitutionCA

    def enroll(self, citizen_id: str, wallet: CitizenWallet | None = None) -> CitizenWallet:
        wallet = wallet or CitizenWallet.generate(citizen_id)
        self.store.citizens.enroll(
            citizen_id,
            signing_key=wallet.signing_public_key,
            encryption_key=wallet.encryption_public_key,
            at=datetime.now(UTC),
        )
        return wallet

    def client(self, wallet: CitizenWallet) -> CitizenClient:
        return CitizenClient(self.target, wallet, root_certificates=self.ca_pem)

    def register_institution(self, institution_id: str, kind: str) -> InstitutionCredentials:
        """Register an institution and issue its client certificate from the test institution CA."""
        self.store.institutions.register(
            institution_id, kind=kind, name=f"{institution_id} (test)", at=datetime.now(UTC)
        )
        cert, key, serial = self.institution_ca.issue_client_certificate(institution_id, now=datetime.now(UTC))
        self.store.certificates.record(
            "institution", institution_id, serial, at=datetime.now(UTC), not_after=peer_certificate(cert).not_after
        )
        return InstitutionCredentials(institution_id, cert, key)

    def institution_client(self, credentials: InstitutionCredentials, **kw: Any) -> InstitutionClient:
        return InstitutionClient(
            self.mtls_target,
            certificate_chain=credentials.certificate_pem,
            private_key=credentials.private_key_pem,
            root_certificates=self.ca_pem,
            institution_id=credentials.institution_id,
            **kw,
        )

    def register_department(self, department_id: str) -> DepartmentCredentials:
        """Register a department and issue its client certificate from the test institution CA."""
        cert, key, serial = self.institution_ca.issue_client_certificate(
            department_id, kind="department", now=datetime.now(UTC)
        )
        self.store.departments.register(
            department_id,
            at=datetime.now(UTC),
            certificate_serial=serial,
            certificate_not_after=peer_certificate(cert).not_after,
        )
        return DepartmentCredentials(department_id, cert, key)

    def department_client(self, credentials: DepartmentCredentials, **kw: Any) -> DepartmentClient:
        return DepartmentClient(
            self.mtls_target,
            certificate_chain=credentials.certificate_pem,
            private_key=credentials.private_key_pem,
            root_certificates=self.ca_pem,
            **kw,
        )

    def audit(self) -> AuditClient:
        return AuditClient.connect(
            self.target, root_certificates=self.ca_pem, log_verifier_key=self.gateway.log_signer.verifier_key_string()
        )

    def pin(self, policy_id: str) -> PolicyPin:
        return PolicyPin(policy_id, self.gateway.policies[policy_id].sha256)

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.target, grpc.ssl_channel_credentials(self.ca_pem))

    def used_token_rows(self) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM used_request_tokens")).scalar_one())


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(default_policies_dir() / "catalog.yaml")


@pytest.fixture(scope="session")
def policies(catalog: Catalog) -> dict[str, Policy]:
    return load_policies(default_policies_dir(), catalog)


@pytest.fixture(scope="session")
def institution_ca() -> InstitutionCA:
    return InstitutionCA.create(now=datetime.now(UTC))


@pytest.fixture(scope="session")
def test_tls(institution_ca: InstitutionCA) -> tuple[bytes, ServerTls]:
    """A CA made for this test session, a server certificate for localhost from it, and the
    institution CA whose client certificates the server accepts."""
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("Veilgate test CA", now=now)
    chain, key = ca.issue("veilgate-test", hosts=["localhost", "127.0.0.1"], now=now)
    return ca.certificate_pem, ServerTls(
        certificate_chain=chain, private_key=key, client_ca=institution_ca.certificate_pem
    )


@pytest.fixture
def gateway_harness(
    store: Store,
    catalog: Catalog,
    policies: dict[str, Policy],
    institution_ca: InstitutionCA,
    test_tls: tuple[bytes, ServerTls],
) -> Iterator[GatewayHarness]:
    summary = seed_population(store, catalog, citizens=3, seed=11)
    clock = MutableClock()
    gateway = Gateway(
        gateway_id="veilgate.test",
        catalog=catalog,
        store=store,
        signer=GatewaySigner.from_seed(secrets.token_bytes(32)),
        log_signer=NoteSigner.generate("veilgate.test/log"),
        policies=policies,
        clock=clock,
    )
    ca_pem, tls = test_tls
    running = build_server(gateway, address="127.0.0.1:0", tls=tls, workers=4, mtls_address="127.0.0.1:0")
    try:
        yield GatewayHarness(
            target=f"localhost:{running.port}",
            mtls_target=f"localhost:{running.mtls_port}",
            ca_pem=ca_pem,
            gateway=gateway,
            clock=clock,
            store=store,
            citizen_ids=summary.sample_ids,
            institution_ca=institution_ca,
        )
    finally:
        running.stop(grace=None)

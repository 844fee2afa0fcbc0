"""Assemble the gateway's gRPC server: servicers, interceptor chain, health, TLS.

The server is the synchronous ``grpc.server`` with a small thread pool: on two cores it served
CPU-bound handlers faster than ``grpc.aio`` or large pools (measured; see the benchmark issue).
TLS is the default and the only configuration a production caller can reach; plaintext exists only as
``insecure_plaintext=True`` and logs a warning.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from veilgate.errors import ConfigurationError
from veilgate.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    citizen_pb2,
    citizen_pb2_grpc,
    eligibility_pb2,
    eligibility_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
)
from veilgate_server.audit import Auditor, Checkpointer
from veilgate_server.crypto import TlsFiles, peer_certificate
from veilgate_server.crypto.institutions import TRUST_DOMAIN as DEFAULT_TRUST_DOMAIN
from veilgate_server.gateway import PUSH_RECORDS, Gateway
from veilgate_server.rpc.audit import AuditTrail
from veilgate_server.rpc.audit_service import AuditServicer
from veilgate_server.rpc.auth import MutualTlsAuthentication
from veilgate_server.rpc.citizen import CitizenServicer
from veilgate_server.rpc.eligibility import EligibilityServicer
from veilgate_server.rpc.errors import status_name
from veilgate_server.rpc.ingest import IngestServicer
from veilgate_server.rpc.interceptors import ErrorBoundary, HandlerCache
from veilgate_server.rpc.metrics import Metrics
from veilgate_server.storage.log import LogWriter, StoreHealth

__all__ = ["MAX_MESSAGE_BYTES", "MAX_PUSH_BYTES", "TRANSPORT_LIMIT_BYTES", "RunningServer", "ServerTls", "build_server"]

_log = logging.getLogger("veilgate.server")

# Requests are small (a token of at most 16 KiB), but for a department's push of records (up to
# MAX_PUSH_BYTES). The audit trail refuses a larger one, and logs it like every other call, with
# REQUEST_TOO_LARGE. To let it, gRPC itself receives up to TRANSPORT_LIMIT_BYTES: only a request past
# that (RESOURCE_EXHAUSTED) is refused before any interceptor runs, and so is not logged; it bounds
# what one request can make the gateway hold.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_PUSH_BYTES = 1024 * 1024
TRANSPORT_LIMIT_BYTES = 2 * MAX_PUSH_BYTES
_SERVICE_DESCRIPTORS = (
    citizen_pb2.DESCRIPTOR.services_by_name["CitizenService"],
    eligibility_pb2.DESCRIPTOR.services_by_name["EligibilityService"],
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"],
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
)
_SERVICES = tuple(service.full_name for service in _SERVICE_DESCRIPTORS)
_METHODS = frozenset(
    f"/{service.full_name}/{method.name}" for service in _SERVICE_DESCRIPTORS for method in service.methods
)


MAX_CONCURRENT_CALLS = 1024
"""Calls one server process holds at once, running or queued for a worker. Past it a call is
refused at once (RESOURCE_EXHAUSTED, which the SDK treats as the gateway being unavailable and
retries with backoff) instead of queueing without bound: under overload the queue's latency and
memory would grow until every call timed out."""
MAX_STREAMS_PER_CONNECTION = 256
"""HTTP/2 streams a client may open at once on one connection; more wait in the client."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The server's certificate and key, and the CA whose client certificates identify institutions
    and departments.

    gRPC Python can either require and verify client certificates or not ask for them at all; it has
    no "ask, verify if presented" mode. So the gateway listens twice with the same services: a TLS
    port for citizens and auditors, and a mutual-TLS port (client certificate required, verified
    against ``client_ca``) for institutions and departments. Their services refuse any call that
    arrives without a verified certificate, so reaching them on the TLS port gets nothing but
    CLIENT_CERTIFICATE_REQUIRED (see :mod:`veilgate_server.rpc.auth`)."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None
    # Where the certificate and key were read from: a certificate renewed there (as an ACME client
    # or cert-manager renews it) is served to every new connection, with no restart.
    files: TlsFiles | None = None


class _ServerCertificates:
    """The server's TLS material as its files hold it now, looked at whenever a connection is made:
    once the certificate or its key file changes, and the two match again, the new pair is served
    to new connections (those already open keep theirs). A pair that does not match (caught
    between the certificate's write and the key's) or does not read is logged, and the pair in
    use stays, until the files change again."""

    def __init__(self, tls: ServerTls, files: TlsFiles | None) -> None:
        """Without ``files``, ``tls`` is served as it is, for good."""
        self._tls = tls
        self._files = files
        self._stamp = files.stamp() if files is not None else None
        self._lock = threading.Lock()
        self.not_after = peer_certificate(tls.certificate_chain).not_after

    @property
    def reloads(self) -> bool:
        return self._files is not None

    def current(self) -> ServerTls:
        if self._files is None:
            return self._tls
        stamp = self._files.stamp()
        if stamp is None or stamp == self._stamp:
            return self._tls
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    chain, key, not_after = self._files.load_checked()
                except ConfigurationError as e:
                    _log.error("%s; new connections keep the certificate in use", e)
                else:
                    self._tls = dataclasses.replace(self._tls, certificate_chain=chain, private_key=key)
                    self.not_after = not_after
                    _log.warning("TLS certificate taken up from %s (expires %s)", self._files.certificate, not_after)
            return self._tls


def _not_after(certificates: _ServerCertificates) -> dt.datetime:
    certificates.current()  # a renewal is taken up at a scrape too, not only at a new connection
    return certificates.not_after


def _server_credentials(certificates: _ServerCertificates, *, mutual: bool) -> grpc.ServerCredentials:
    """A port's TLS credentials: client certificates required and checked against the institution CA
    when ``mutual``; the server's own taken from ``certificates`` as they change."""
    tls = certificates.current()
    if mutual and tls.client_ca is None:
        raise ConfigurationError("the mutual-TLS port needs the institution CA certificate")
    client_ca = tls.client_ca if mutual else None
    if not certificates.reloads:
        key_pair = [(tls.private_key, tls.certificate_chain)]
        return grpc.ssl_server_credentials(key_pair, root_certificates=client_ca, require_client_auth=mutual)
    served = [tls]

    def configuration(pair: ServerTls) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.certificate_chain)], root_certificates=client_ca
        )

    def changed() -> grpc.ServerCertificateConfiguration | None:  # gRPC asks at each new connection
        try:
            pair = certificates.current()
        except Exception:  # a failure here must never refuse a connection
            _log.exception("could not look at the TLS certificate files")
            return None
        if pair is served[0]:
            return None
        served[0] = pair
        return configuration(pair)

    # gRPC documents None as "no change"; its type stubs leave that out.
    return grpc.dynamic_ssl_server_credentials(
        configuration(tls),
        changed,  # type: ignore[arg-type]
        require_client_authentication=mutual,
    )


@dataclass(slots=True)
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    writer: LogWriter
    checkpointer: Checkpointer
    mtls_port: int | None = None
    metrics: Metrics | None = None
    metrics_port: int | None = None
    on_stop: list[Callable[[], None]] = field(default_factory=list)  # what its starter runs beside it

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.writer.close()
        self.checkpointer.close()  # signs a final checkpoint over every appended entry
        if self.metrics is not None:
            self.metrics.close()
        for close in self.on_stop:
            close()


def build_server(
    gateway: Gateway,
    *,
    address: str,
    tls: ServerTls | None,
    insecure_plaintext: bool = False,
    reflection_enabled: bool = False,
    workers: int = 8,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    mtls_address: str | None = None,
    checkpoint_interval: float = 1.0,
    reuse_port: bool = False,
    max_concurrent_calls: int = MAX_CONCURRENT_CALLS,
    metrics_address: str | None = None,
) -> RunningServer:
    """Bind and start the server. Addresses may end in ``:0`` for a free port (see ``.port`` and
    ``.mtls_port``). ``mtls_address`` (with ``tls.client_ca``) opens the institutions' port.

    ``reuse_port`` lets several server processes listen on the same ports (``SO_REUSEPORT``; the
    kernel spreads connections over them). It is off otherwise, so that a second gateway started by
    mistake on a port in use fails to start instead of quietly taking half the connections.

    ``metrics_address`` (``host:port``, port 0 for a free one; see ``.metrics_port``) serves this
    process's figures for Prometheus (see :mod:`veilgate_server.rpc.metrics`)."""
    store_health = StoreHealth()
    writer = LogWriter(gateway.store.log, health=store_health)
    auditor = Auditor(gateway.store, writer, clock=gateway.clock, status_of=status_name)
    checkpointer = Checkpointer(gateway.store, gateway.log_signer, interval=checkpoint_interval, health=store_health)
    certificates = _ServerCertificates(tls, tls.files) if tls is not None else None  # both ports'
    metrics = (
        Metrics(
            _METHODS,
            writer,
            renewal_due=gateway.store.certificates.renewal_due,
            server_certificate_not_after=None if certificates is None else functools.partial(_not_after, certificates),
        )
        if metrics_address is not None
        else None
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veilgate-rpc"),
        # Outermost first: each method's handler is built once; errors become statuses; every call
        # is logged (denials included, so the audit trail sits outside authentication); then
        # institutions and departments are authenticated.
        interceptors=[
            HandlerCache(_METHODS),
            ErrorBoundary(metrics),
            AuditTrail(
                auditor,
                max_request_bytes=MAX_MESSAGE_BYTES,
                request_limits={PUSH_RECORDS: MAX_PUSH_BYTES},
                salted_methods={PUSH_RECORDS},
            ),
            MutualTlsAuthentication(gateway, trust_domain=trust_domain),
        ],
        options=[
            ("grpc.max_receive_message_length", TRANSPORT_LIMIT_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ],
        maximum_concurrent_rpcs=max_concurrent_calls,
    )
    citizen_pb2_grpc.add_CitizenServiceServicer_to_server(CitizenServicer(gateway, auditor, checkpointer), server)
    eligibility_pb2_grpc.add_EligibilityServiceServicer_to_server(EligibilityServicer(gateway, auditor), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(gateway.store, checkpointer), server)
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(IngestServicer(gateway, auditor), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection_enabled:
        reflection.enable_server_reflection((*_SERVICES, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    mtls_port: int | None = None
    try:
        if certificates is not None:
            port = server.add_secure_port(address, _server_credentials(certificates, mutual=False))
            if mtls_address is not None:
                mtls_port = server.add_secure_port(mtls_address, _server_credentials(certificates, mutual=True))
                if mtls_port == 0:
                    raise ConfigurationError(f"could not listen on {mtls_address}")
        elif insecure_plaintext:
            _log.warning("serving PLAINTEXT on %s: insecure, for local development only", address)
            port = server.add_insecure_port(address)
        else:
            raise ConfigurationError("no TLS credentials given; plaintext needs insecure_plaintext=True")
    except RuntimeError as e:
        raise ConfigurationError(f"could not listen on {address}: {e}") from e
    if port == 0:
        raise ConfigurationError(f"could not listen on {address}")
    metrics_port: int | None = None
    if metrics is not None and metrics_address is not None:
        host, _, metrics_at = metrics_address.rpartition(":")
        try:
            metrics_port = metrics.serve(host.strip("[]"), int(metrics_at))
        except (OSError, ValueError) as e:
            server.stop(None)
            raise ConfigurationError(f"could not listen for metrics on {metrics_address}: {e}") from e
        store_health.listen(metrics.store_answers)
    writer.start()
    checkpointer.start()
    server.start()

    def serving(answers: bool) -> None:  # every call needs the store: without it, none can succeed
        status = health_pb2.HealthCheckResponse.SERVING if answers else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", *_SERVICES):
            health_servicer.set(service, status)

    serving(True)
    store_health.listen(serving)
    return RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        writer=writer,
        checkpointer=checkpointer,
        mtls_port=mtls_port,
        metrics=metrics,
        metrics_port=metrics_port,
    )
